-- One headless Ardour 7 session with MSDM Stems (run by tools/hosts/ardour_check.sh through ardour7-lua):
-- a stereo track with strict I/O, Ardour's Lua sine generator, then the plugin's VST3; roll 2 s (the plugin
-- captures), stop (the plugin renders), wait for the render to reach the stem cache, export, save, close,
-- load the session again, find the plugin, close. Prints one KEY value line per fact for the shell script.
io.stdout:setvbuf("no")
local dir = os.getenv("ARDOUR_CHECK_DIR")
local cache = os.getenv("MSDM_CACHE_DIR")
local wait_s = tonumber(os.getenv("ARDOUR_CHECK_RENDER_WAIT") or "60")
-- ARDOUR_CONTROL=1: the same session without the plugin (a control for host bugs).
local control = os.getenv("ARDOUR_CONTROL") == "1"
AudioEngine:set_backend("None (Dummy)", "", "")
local s = create_session(dir .. "/sess", "sess", 48000)
assert(s, "create_session failed")
local found = false
for p in ARDOUR.LuaAPI.list_plugins():iter() do
  if p.type == ARDOUR.PluginType.VST3 and p.name == "MSDM Stems" then found = true end
end
assert(found or control, "MSDM Stems VST3 not listed (is the VST3 cache older than the module? see ardour_check.sh)")
local track = Session:new_audio_track(2, 2, nil, 1, "t", ARDOUR.PresentationInfo.max_order, ARDOUR.TrackMode.Normal, true):front()
-- Lua-made tracks do not get strict I/O; without it the 2-in/10-out plugin widens the track to 10 outputs
-- and Ardour 7.3's main outs deliver nothing to the master bus (the export would be silent).
track:set_strict_io(true)
-- Ardour 7.3 ships the Lua sine generator as "SinGen"; newer versions as "ACE Sine Generator".
local sg = ARDOUR.LuaAPI.new_plugin(Session, "ACE Sine Generator", ARDOUR.PluginType.Lua, "")
if sg:isnil() then sg = ARDOUR.LuaAPI.new_plugin(Session, "SinGen", ARDOUR.PluginType.Lua, "") end
assert(not sg:isnil(), "no Lua sine generator found")
assert(track:add_processor_by_index(sg, 0, nil, true) == 0, "sine insert failed")
if not control then
  local p = ARDOUR.LuaAPI.new_plugin(Session, "MSDM Stems", ARDOUR.PluginType.VST3, "")
  assert(not p:isnil(), "MSDM Stems could not be instantiated")
  assert(track:add_processor_by_index(p, 1, nil, true) == 0, "insert failed")
  print("OUTPUTS", p:to_insert():natural_output_streams():n_audio())
  print("LATENCY", p:signal_latency())
end
Session:request_roll(ARDOUR.TransportRequestSource.TRS_UI); sleep(2)
Session:request_stop(false, false, ARDOUR.TransportRequestSource.TRS_UI)
-- The render runs on the plugin's own threads; it is done when its four stems are in the cache.
local rendered = false
for _ = 1, (control and 0 or wait_s * 4) do
  local h = io.popen('find "' .. cache .. '/stems" -name piano.wav 2>/dev/null')
  local out = h:read("*a"); h:close()
  if out ~= "" then rendered = true; break end
  sleep(0.25)
end
print("RENDERED", rendered and "yes" or "no")
local e = Session:simple_export()
e:set_name("render"); e:set_folder(dir .. "/out"); e:set_range(0, 96000)
e:set_preset("75969a1c-3133-4694-864b-a1fa50e43348")
print("EXPORT", e:run_export())
print("SAVE", Session:save_state(""))
close_session()
local s2 = load_session(dir .. "/sess", "sess")
assert(s2, "reload failed")
local n = 0
for r in Session:get_routes():iter() do
  local i = 0
  while true do
    local proc = r:nth_plugin(i); if proc:isnil() then break end
    if proc:display_name() == "MSDM Stems" then n = n + 1 end
    i = i + 1
  end
end
print("RELOADED_INSTANCES", n)
close_session()
print("DONE")
