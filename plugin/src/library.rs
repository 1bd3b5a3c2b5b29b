//! Keeps this library mapped once it has started threads that it cannot join.
//!
//! Everything the plugin starts itself (the worker, the render thread, the compute pool) is
//! joined when the instance is destroyed. One set of threads is not ours to stop: candle's
//! element-wise pool (`candle-bp-*`), a process-wide static inside this library that candle starts
//! at the first large CPU tensor op and never ends. If the host unloaded the library after the
//! last instance, those parked threads would wake into unmapped code. So before the first render
//! the library marks itself not-unloadable (`RTLD_NODELETE`); the host's own `dlclose` then
//! leaves it mapped, which costs the host nothing else.

use std::sync::Once;

/// Marks the loaded library as not-unloadable (once; later calls do nothing).
pub fn pin() {
    static PINNED: Once = Once::new();
    PINNED.call_once(pin_now);
}

#[cfg(unix)]
fn pin_now() {
    // SAFETY: dladdr on the address of a function in this library fills `info` with its file
    // name, owned by the loader; dlopen with RTLD_NOLOAD only looks up an object that is already
    // loaded (adding a reference and the NODELETE flag), it never loads anything new.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(pin as *const () as *const libc::c_void, &mut info) == 0 || info.dli_fname.is_null() {
            nice_plug::nice_warn!("msdm: cannot find this library's file; it may be unloaded under its threads");
            return;
        }
        let handle = libc::dlopen(info.dli_fname, libc::RTLD_NOW | libc::RTLD_NOLOAD | libc::RTLD_NODELETE);
        if handle.is_null() {
            nice_plug::nice_warn!("msdm: cannot pin this library in memory");
        }
        // The handle is deliberately never closed.
    }
}

#[cfg(not(unix))]
fn pin_now() {
    // Not done on Windows yet (it would be GetModuleHandleExW with GET_MODULE_HANDLE_EX_FLAG_PIN);
    // only Linux and macOS builds are made and tested.
}
