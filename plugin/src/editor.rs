//! The egui editor: state, job and roles, quality, takes, re-mix controls, waveforms, residual,
//! device, model and export. Reads the worker's [`Status`](crate::shared::Status) and sends
//! [`Command`]s; parameters go through the host's parameter setter.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use egui::{Color32, RichText};
use nice_plug::context::gui::GuiContext;
use nice_plug::editor::dpi::LogicalSize;
use nice_plug::prelude::*;
use nice_plug_egui::widgets::ParamSlider;
use nice_plug_egui::{create_egui_editor, EguiEditor, EguiEditorState, EguiNiceSettings, NiceEguiApp, RepaintNotifier};

use crate::params::{JobKind, OutputMode, Quality, Role};
use crate::messages::Command;
use crate::shared::{Peaks, Phase, Shared};
use crate::{STEM_COUNT, STEM_TITLES};

pub type MsdmEditor = EguiEditor<EditorApp>;

const STEM_COLORS: [Color32; STEM_COUNT] = [
    Color32::from_rgb(0xe0, 0x8a, 0x3c),
    Color32::from_rgb(0x5c, 0xa8, 0xe8),
    Color32::from_rgb(0x9c, 0xd0, 0x5c),
    Color32::from_rgb(0xd0, 0x7c, 0xd8),
];

pub fn create(shared: Arc<Shared>, state: Arc<EguiEditorState>) -> Option<MsdmEditor> {
    let notifier = RepaintNotifier::new();
    let n = notifier.clone();
    shared.set_repaint(Some(Box::new(move || n.request_repaint())));
    let session = shared.params.session.get();
    let app = EditorApp {
        export_dir: session
            .export_dir
            .clone()
            .unwrap_or_else(|| default_export_dir().display().to_string()),
        model_path: session.model_path.clone().unwrap_or_default(),
        shared,
        gui: None,
        selection: None,
    };
    // Resizable; the size is saved with the project (crate::editor_size).
    let (w, h) = crate::editor_size::MIN;
    let resize_hint = ResizeHint::resizable().with_min_logical_size(LogicalSize::new(w, h));
    let settings = EguiNiceSettings { title: "MSDM Stems".into(), resize_hint, ..Default::default() };
    create_egui_editor(state, notifier, settings, app)
}

fn default_export_dir() -> std::path::PathBuf {
    directories::UserDirs::new()
        .and_then(|d| d.audio_dir().map(|p| p.to_path_buf()).or_else(|| Some(d.home_dir().to_path_buf())))
        .unwrap_or_else(std::env::temp_dir)
        .join("MSDM Stems")
}

pub struct EditorApp {
    shared: Arc<Shared>,
    gui: Option<GuiContext>,
    export_dir: String,
    model_path: String,
    /// A range dragged on one stem's waveform: (stem, start, end) as fractions of the take.
    selection: Option<(usize, f32, f32)>,
}

impl NiceEguiApp for EditorApp {
    fn build(
        &mut self,
        egui_ctx: egui::Context,
        nice_gui_ctx: GuiContext,
        _frame: &mut nice_plug_egui::Frame,
    ) -> Result<(), nice_plug_egui::baseview::HandlerError> {
        egui_ctx.set_visuals(egui::Visuals::dark());
        self.gui = Some(nice_gui_ctx);
        Ok(())
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut nice_plug_egui::Frame) {
        self.shared.sync_session();
        let Some(gui) = self.gui.clone() else { return };
        let setter = gui.param_setter();
        egui::CentralPanel::default().show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| self.contents(ui, &setter));
        });
        // Keep the progress, ETA and capture length moving.
        let busy = self.shared.capture.capturing.load(Ordering::Relaxed)
            || self.shared.capture.armed.load(Ordering::Relaxed)
            || matches!(self.shared.status().phase, Phase::Processing { .. });
        if busy {
            ui.ctx().request_repaint_after(std::time::Duration::from_millis(100));
        }
    }
}

fn set<P: Param>(setter: &ParamSetter, param: &P, value: P::Plain) {
    setter.begin_set_parameter(param);
    setter.set_parameter(param, value);
    setter.end_set_parameter(param);
}

impl EditorApp {
    fn contents(&mut self, ui: &mut egui::Ui, setter: &ParamSetter) {
        let shared = Arc::clone(&self.shared);
        let params = &shared.params;
        let status = shared.status().clone();
        let session = params.session.get();

        ui.horizontal(|ui| {
            ui.heading("MSDM Stems");
            ui.separator();
            ui.label(format!(
                "Device: {}",
                status.device.clone().unwrap_or_else(|| "not loaded yet".into())
            ));
        });
        ui.label(
            RichText::new(format!(
                "Model: {}",
                status.model.clone().unwrap_or_else(|| match crate::models::resolve(session.model_path.as_deref()) {
                    Ok(p) => format!("{} (loads on the first render)", p.display()),
                    Err(e) => format!("{e:#}"),
                })
            ))
            .small(),
        );
        ui.separator();

        // --- State ---
        let armed = shared.capture.armed.load(Ordering::Acquire);
        let capturing = shared.capture.capturing.load(Ordering::Acquire);
        let cap_rate = shared.capture_rate.load(Ordering::Acquire).max(1);
        let cap_secs = shared.capture_frames.load(Ordering::Acquire) as f64 / cap_rate as f64;
        ui.horizontal(|ui| {
            let (text, color) = match &status.phase {
                Phase::Processing { .. } => ("PROCESSING".to_string(), Color32::from_rgb(0xf0, 0xc0, 0x40)),
                Phase::Error(_) => ("ERROR".to_string(), Color32::from_rgb(0xf0, 0x50, 0x50)),
                _ if capturing => (format!("CAPTURING {cap_secs:.1} s"), Color32::from_rgb(0xf0, 0x50, 0x50)),
                _ if armed => ("ARMED".to_string(), Color32::from_rgb(0xf0, 0x90, 0x40)),
                Phase::Ready => ("READY".to_string(), Color32::from_rgb(0x60, 0xd0, 0x60)),
                Phase::Idle => ("IDLE".to_string(), Color32::GRAY),
            };
            ui.label(RichText::new(text).strong().color(color).size(18.0));
            ui.separator();
            if ui.add_enabled(!armed, egui::Button::new("Arm capture")).clicked() {
                shared.send(Command::Arm);
            }
            if ui.button("Process").clicked() {
                shared.send(Command::Process { new_take: false });
            }
            if ui.button("New take").on_hover_text("Render again with a new seed; earlier takes are kept").clicked() {
                shared.send(Command::Process { new_take: true });
            }
            let busy = matches!(status.phase, Phase::Processing { .. }) || armed;
            if ui.add_enabled(busy, egui::Button::new("Cancel")).clicked() {
                shared.send(Command::Cancel);
            }
        });
        match &status.phase {
            Phase::Processing { done, total, started } => {
                let frac = if *total > 0 { *done as f32 / *total as f32 } else { 0.0 };
                let elapsed = started.elapsed().as_secs_f64();
                let eta = if *done > 0 && *total > 0 {
                    format!("ETA {:.0} s", elapsed * (*total - *done) as f64 / *done as f64)
                } else {
                    "loading the model…".into()
                };
                ui.add(egui::ProgressBar::new(frac).text(format!("{done}/{total} denoiser steps · {elapsed:.0} s · {eta}")));
            }
            Phase::Error(e) => {
                ui.label(RichText::new(e).color(Color32::from_rgb(0xf0, 0x70, 0x70)));
            }
            _ => {}
        }
        if !status.message.is_empty() {
            ui.label(&status.message);
        }
        if let Some(w) = &status.warning {
            ui.label(RichText::new(format!("⚠ {w}")).color(Color32::from_rgb(0xf0, 0xc0, 0x40)));
        }
        let overruns = shared.capture.overruns.load(Ordering::Relaxed);
        if overruns > 0 {
            ui.label(RichText::new(format!("⚠ capture overrun: {overruns} block(s) dropped")).color(Color32::from_rgb(0xf0, 0xc0, 0x40)));
        }
        if shared.timeline_warning.load(Ordering::Relaxed) {
            ui.label(RichText::new("⚠ The host gives only a beat timeline: positions are wrong across tempo changes.").color(Color32::from_rgb(0xf0, 0xc0, 0x40)));
        }
        ui.separator();

        // --- Job ---
        egui::Grid::new("job").num_columns(2).spacing([12.0, 6.0]).show(ui, |ui| {
            ui.label("Job");
            ui.horizontal(|ui| {
                let job = params.job.value();
                for (kind, label) in [(JobKind::Separate, "Separate"), (JobKind::Impute, "Impute"), (JobKind::Generate, "Generate")] {
                    if ui.selectable_label(job == kind, label).clicked() {
                        set(setter, &params.job, kind);
                    }
                }
            });
            ui.end_row();
            match params.job.value() {
                JobKind::Impute => {
                    ui.label("Roles");
                    ui.horizontal(|ui| {
                        #[allow(clippy::needless_range_loop)]
                        for k in 0..STEM_COUNT {
                            let p = &params.stem(k).role;
                            let role = p.value();
                            egui::ComboBox::from_id_salt(("role", k))
                                .selected_text(format!("{}: {:?}", STEM_TITLES[k], role))
                                .width(130.0)
                                .show_ui(ui, |ui| {
                                    for r in [Role::Given, Role::Generate, Role::Silent] {
                                        if ui.selectable_label(role == r, format!("{r:?}")).clicked() {
                                            set(setter, p, r);
                                        }
                                    }
                                });
                        }
                    });
                    ui.end_row();
                }
                JobKind::Generate => {
                    ui.label("Length");
                    ui.add(ParamSlider::for_param(&params.bars, setter));
                    ui.end_row();
                }
                JobKind::Separate => {}
            }
            ui.label("Quality");
            ui.horizontal(|ui| {
                let q = params.quality.value();
                let (pd, pf) = match status.predicted {
                    Some((d, f)) => (format!(" (~{})", secs(d)), format!(" (~{})", secs(f))),
                    None => (String::new(), String::new()),
                };
                if ui.selectable_label(q == Quality::Draft, format!("Draft{pd}")).clicked() {
                    set(setter, &params.quality, Quality::Draft);
                }
                if ui.selectable_label(q == Quality::Final, format!("Final{pf}")).clicked() {
                    set(setter, &params.quality, Quality::Final);
                }
            });
            ui.end_row();
            ui.label("Seed");
            ui.horizontal(|ui| {
                let mut seed = session.seed;
                if ui.add(egui::DragValue::new(&mut seed).range(0..=u32::MAX as u64)).changed() {
                    params.session.update(|s| s.seed = seed);
                }
                ui.label(RichText::new("Process renders with this seed; New take picks a new one").small());
            });
            ui.end_row();
            ui.label("Takes");
            ui.horizontal_wrapped(|ui| {
                if session.takes.is_empty() {
                    ui.label("none yet");
                }
                for (i, t) in session.takes.iter().enumerate() {
                    let label = match &t.spec.range {
                        Some(r) => format!(
                            "{} · {} {:.2}–{:.2} s again · seed {}",
                            i + 1,
                            STEM_TITLES.get(r.stem).copied().unwrap_or("?"),
                            r.from as f64 / t.rate.max(1) as f64,
                            r.to as f64 / t.rate.max(1) as f64,
                            t.seed
                        ),
                        None => format!("{} · {:?} · seed {}", i + 1, t.spec.job, t.seed),
                    };
                    if ui.selectable_label(session.current == Some(i), label).clicked() {
                        shared.send(Command::SelectTake(i));
                    }
                }
            });
            ui.end_row();
        });
        ui.separator();

        // --- Waveforms ---
        let waves = Arc::clone(&status.waves);
        ui.label("Captured clip");
        wave(ui, waves.clip.as_ref(), Color32::LIGHT_GRAY, 48.0);
        if let Some(stems) = &waves.stems {
            for k in 0..STEM_COUNT {
                ui.horizontal(|ui| {
                    ui.label(RichText::new(format!("{:<7}", STEM_TITLES[k])).monospace().color(STEM_COLORS[k]));
                    let shown = self.selection.filter(|s| s.0 == k).map(|s| (s.1, s.2));
                    let (rect, response) = wave_with(ui, Some(&stems[k]), STEM_COLORS[k], 34.0, shown);
                    self.drag_select(k, rect, &response);
                });
            }
            self.regenerate_row(ui, &status.phase, session.current_take());
        }
        if let Some((max, rms)) = status.residual {
            ui.label(format!("Residual of stems vs. mix: max {max:.2e} (engine), RMS {rms:.2e} (at the host rate)"));
        }
        ui.separator();

        // --- Re-mix ---
        ui.horizontal(|ui| {
            ui.label("Main output");
            let mode = params.output.value();
            if ui.selectable_label(mode == OutputMode::PassThrough, "Pass-through").clicked() {
                set(setter, &params.output, OutputMode::PassThrough);
            }
            if ui.selectable_label(mode == OutputMode::Remix, "Re-mix of stems").clicked() {
                set(setter, &params.output, OutputMode::Remix);
            }
        });
        egui::Grid::new("mix").num_columns(4).spacing([10.0, 4.0]).show(ui, |ui| {
            for k in 0..STEM_COUNT {
                let p = params.stem(k);
                ui.label(RichText::new(STEM_TITLES[k]).color(STEM_COLORS[k]));
                ui.add(ParamSlider::for_param(&p.gain, setter).with_width(180.0));
                let mute = p.mute.value();
                if ui.selectable_label(mute, "M").on_hover_text("Mute in the re-mix").clicked() {
                    set(setter, &p.mute, !mute);
                }
                let solo = p.solo.value();
                if ui.selectable_label(solo, "S").on_hover_text("Solo in the re-mix").clicked() {
                    set(setter, &p.solo, !solo);
                }
                ui.end_row();
            }
        });
        ui.separator();

        // --- Export and model ---
        ui.horizontal(|ui| {
            ui.label("Export to");
            ui.add(egui::TextEdit::singleline(&mut self.export_dir).desired_width(420.0));
            if ui.button("Export stems").on_hover_text("WAV at the host rate; existing files are never overwritten").clicked() {
                shared.send(Command::Export(self.export_dir.trim().into()));
            }
            if ui.button("Export MIDI").on_hover_text("The bass line as a MIDI file, on the host's tempo grid; never overwrites").clicked() {
                shared.send(Command::ExportMidi(self.export_dir.trim().into()));
            }
        });
        ui.horizontal(|ui| {
            ui.label("Model file");
            ui.add(egui::TextEdit::singleline(&mut self.model_path).hint_text("default model").desired_width(420.0));
            if ui.button("Use").clicked() {
                let p = self.model_path.trim();
                shared.send(Command::SetModel((!p.is_empty()).then(|| p.to_string())));
            }
        });
    }
}

impl EditorApp {
    /// Dragging across a stem's waveform selects a range of it (a click clears the selection).
    fn drag_select(&mut self, stem: usize, rect: egui::Rect, response: &egui::Response) {
        let at = |r: &egui::Response| r.interact_pointer_pos().map(|p| ((p.x - rect.left()) / rect.width()).clamp(0.0, 1.0));
        if response.drag_started() {
            if let Some(x) = at(response) {
                self.selection = Some((stem, x, x));
            }
        } else if response.dragged() {
            if let (Some(x), Some(sel)) = (at(response), self.selection.as_mut()) {
                if sel.0 == stem {
                    sel.2 = x;
                }
            }
        } else if response.clicked() {
            self.selection = None;
        }
    }

    /// The selected range and "Regenerate range".
    fn regenerate_row(&mut self, ui: &mut egui::Ui, phase: &Phase, take: Option<&crate::session::Take>) {
        let range = self.selection.map(|(k, a, b)| (k, a.min(b) as f64, a.max(b) as f64)).filter(|r| r.2 - r.1 > 0.002);
        ui.horizontal(|ui| {
            let (text, ok) = match (range, take) {
                (Some((k, a, b)), Some(t)) => {
                    let secs = t.len as f64 / t.rate.max(1) as f64;
                    (format!("{} from {:.2} s to {:.2} s", STEM_TITLES[k], a * secs, b * secs), true)
                }
                _ => ("Drag across a stem's waveform to select a range to make again.".to_string(), false),
            };
            let idle = !matches!(phase, Phase::Processing { .. });
            let button = ui
                .add_enabled(ok && idle, egui::Button::new("Regenerate range"))
                .on_hover_text("Make the selected part of this stem again with a new seed, as a new take; the rest is kept");
            if button.clicked() {
                if let Some((stem, from, to)) = range {
                    self.shared.send(Command::Regenerate { stem, from, to });
                }
            }
            ui.label(RichText::new(text).small());
        });
    }
}

fn secs(s: f64) -> String {
    if s >= 90.0 { format!("{:.1} min", s / 60.0) } else { format!("{s:.0} s") }
}

fn wave(ui: &mut egui::Ui, peaks: Option<&Peaks>, color: Color32, height: f32) {
    wave_with(ui, peaks, color, height, None);
}

/// A waveform that can be dragged across; `selected` (fractions) is shaded.
fn wave_with(ui: &mut egui::Ui, peaks: Option<&Peaks>, color: Color32, height: f32, selected: Option<(f32, f32)>) -> (egui::Rect, egui::Response) {
    let width = ui.available_width().max(100.0);
    let (rect, response) = ui.allocate_exact_size(egui::vec2(width, height), egui::Sense::click_and_drag());
    let painter = ui.painter_at(rect);
    painter.rect_filled(rect, 2.0, Color32::from_gray(24));
    if let Some((a, b)) = selected {
        let x = |f: f32| rect.left() + f * rect.width();
        let band = egui::Rect::from_x_y_ranges(x(a.min(b))..=x(a.max(b)), rect.y_range());
        painter.rect_filled(band, 0.0, Color32::from_rgba_unmultiplied(255, 255, 255, 40));
    }
    let Some(p) = peaks else {
        painter.text(rect.center(), egui::Align2::CENTER_CENTER, "—", egui::FontId::proportional(12.0), Color32::GRAY);
        return (rect, response);
    };
    let n = p.min.len().max(1);
    let peak = p.max.iter().chain(&p.min).fold(1e-6f32, |a, x| a.max(x.abs()));
    let scale = (rect.height() * 0.5 - 1.0) / peak.max(0.05);
    let mid = rect.center().y;
    for (i, (lo, hi)) in p.min.iter().zip(&p.max).enumerate() {
        let x = rect.left() + (i as f32 + 0.5) * rect.width() / n as f32;
        painter.line_segment(
            [egui::pos2(x, mid - hi * scale), egui::pos2(x, mid - lo * scale - 0.5)],
            egui::Stroke::new(1.0, color),
        );
    }
    (rect, response)
}
