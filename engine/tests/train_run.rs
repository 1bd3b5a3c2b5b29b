//! The training loop on a small dataset written here: bit-for-bit resume, stop flag, run files,
//! validation and clear errors.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use candle_core::Device;
use msdm::config::ModelConfig;
use msdm::model_file::Model;
use msdm::train::{train, Event, RunSettings, Schedule, Trainer};

/// `<root>/<split>/TrackNNNNN/{bass,drums,guitar,piano}.wav`: 1 s of tones and clicks at 22,050 Hz.
fn write_dataset(root: &Path) {
    let spec = hound::WavSpec { channels: 1, sample_rate: 22_050, bits_per_sample: 32, sample_format: hound::SampleFormat::Float };
    for (split, tracks) in [("train", 3), ("validation", 2)] {
        for t in 0..tracks {
            let dir = root.join(split).join(format!("Track{t:05}"));
            std::fs::create_dir_all(&dir).unwrap();
            for (s, stem) in msdm::STEMS.iter().enumerate() {
                if split == "train" && t == 1 && s == 2 {
                    continue; // a missing stem reads as silence
                }
                let mut w = hound::WavWriter::create(dir.join(format!("{stem}.wav")), spec).unwrap();
                for n in 0..22_050 {
                    let f = 55.0 * (1 + s + t) as f32;
                    let v = match s {
                        1 => if n % 5512 < 200 { 0.5 * (1.0 - (n % 5512) as f32 / 200.0) } else { 0.0 },
                        _ => 0.25 * (std::f32::consts::TAU * f * n as f32 / 22_050.0).sin(),
                    };
                    w.write_sample(v).unwrap();
                }
                w.finalize().unwrap();
            }
        }
    }
}

fn settings(root: &Path) -> RunSettings {
    let mut s = RunSettings::new(ModelConfig::tiny(), root.to_path_buf(), 42);
    s.window = 256;
    s.batch_size = 2;
    s.min_duration = 0.5;
    s.val_batches = 2;
    s.adam.lr = 1e-3;
    s
}

fn schedule(steps: u64) -> Schedule {
    Schedule { steps, checkpoint_every: 2, val_every: 3, log_every: 1 }
}

fn weights_bits(path: &Path) -> Vec<(String, Vec<u32>)> {
    let m = Model::load(path, &Device::Cpu).unwrap();
    m.tensors()
        .iter()
        .map(|(n, t)| (n.clone(), t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()))
        .collect()
}

fn run(trainer: &mut Trainer, steps: u64) -> Vec<(u64, f64)> {
    let mut losses = Vec::new();
    let stop = AtomicBool::new(false);
    train(trainer, &schedule(steps), &stop, &mut |e| {
        if let Event::Step { step, loss, .. } = e {
            losses.push((*step, *loss));
        }
    })
    .unwrap();
    losses
}

#[test]
fn train_resume_is_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data);

    let straight = dir.path().join("straight");
    let mut t = Trainer::create(&straight, settings(&data), true, &Device::Cpu).unwrap();
    t.enable_weight_average(0.9).unwrap();
    let all = run(&mut t, 6);
    drop(t);

    let split = dir.path().join("split");
    let mut t = Trainer::create(&split, settings(&data), true, &Device::Cpu).unwrap();
    t.enable_weight_average(0.9).unwrap();
    let mut parts = run(&mut t, 3);
    drop(t);
    let mut t = Trainer::resume(&split, true, &Device::Cpu).unwrap();
    assert_eq!(t.step_count(), 3);
    assert_eq!(t.weight_average().map(|e| (e.decay, e.since_step)), Some((0.9, 0)), "the average is part of the checkpoint");
    let e = format!("{:#}", t.enable_weight_average(0.99).unwrap_err());
    assert!(e.contains("already keeps a weight average with decay 0.9"), "{e}");
    parts.extend(run(&mut t, 6));
    assert_eq!(t.step_count(), 6);

    assert_eq!(all.iter().map(|p| p.1.to_bits()).collect::<Vec<_>>(), parts.iter().map(|p| p.1.to_bits()).collect::<Vec<_>>());
    for file in ["model.safetensors", "ema.safetensors"] {
        let (a, b) = (weights_bits(&straight.join(file)), weights_bits(&split.join(file)));
        assert_eq!(a.len(), b.len());
        for ((na, va), (nb, vb)) in a.iter().zip(&b) {
            assert_eq!(na, nb);
            assert!(va == vb, "'{na}' of {file} differs after resume");
        }
    }
    // the average lags the weights: it differs from them and from the initialization
    let ema = Model::load(&straight.join("ema.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(ema.meta.info["steps"], 6);
    assert_eq!(ema.meta.info["ema"]["decay"], 0.9);
    // ... and training did change the weights
    let init = Model::random(ModelConfig::tiny(), 42, &Device::Cpu).unwrap();
    let m = Model::load(&straight.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_ne!(init.id(), m.id());
    assert_ne!(ema.id(), m.id());
    assert_ne!(ema.id(), init.id());

    // run files: model meta, optimizer, CSV (same rows either way), best model
    assert_eq!(m.meta.info["steps"], 6);
    assert_eq!(m.meta.info["seed"], 42);
    assert!(m.meta.info["cpu_seconds"].as_f64().is_some());
    for f in ["optimizer.safetensors", "best.safetensors", "trainer.json", "train.csv"] {
        assert!(straight.join(f).exists(), "{f} missing");
    }
    let csv = |p: &Path| std::fs::read_to_string(p.join("train.csv")).unwrap();
    let rows: Vec<Vec<String>> = csv(&split).lines().map(|l| l.split(',').map(String::from).collect()).collect();
    assert_eq!(rows[0].join(","), "step,loss,steps_per_s,elapsed_s,val_loss,ema_val_loss");
    assert_eq!(rows.iter().skip(1).map(|r| r[0].clone()).collect::<Vec<_>>(), ["1", "2", "3", "4", "5", "6"]);
    let vals: Vec<&String> = rows.iter().skip(1).map(|r| &r[4]).filter(|v| !v.is_empty()).collect();
    assert_eq!(vals.len(), 2, "validation at steps 3 and 6");
    let ema_vals: Vec<f64> = rows.iter().skip(1).map(|r| &r[5]).filter(|v| !v.is_empty()).map(|v| v.parse().unwrap()).collect();
    assert_eq!(ema_vals.len(), 2, "the average is validated with the weights");
    assert!(ema_vals.iter().zip(vals.iter().map(|v| v.parse::<f64>().unwrap())).all(|(e, v)| e.is_finite() && *e != v));
    let col = |text: String, i: usize| text.lines().map(|l| l.split(',').nth(i).unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(col(csv(&straight), 1), col(csv(&split), 1));
    assert_eq!(col(csv(&straight), 4), col(csv(&split), 4), "validation losses are fixed draws");
    assert_eq!(col(csv(&straight), 5), col(csv(&split), 5));
}

#[test]
fn train_stop_flag_checkpoints_and_resume_continues() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data);
    let run_dir = dir.path().join("run");
    let mut t = Trainer::create(&run_dir, settings(&data), false, &Device::Cpu).unwrap();
    let stop = AtomicBool::new(false);
    let sched = Schedule { steps: 100, checkpoint_every: 0, val_every: 0, log_every: 10 };
    let summary = train(&mut t, &sched, &stop, &mut |e| {
        if let Event::Step { step: 4, .. } = e {
            stop.store(true, std::sync::atomic::Ordering::SeqCst); // as the Ctrl-C handler does
        }
    })
    .unwrap();
    assert!(summary.stopped);
    assert_eq!(summary.end_step, 4);
    drop(t);
    let mut t = Trainer::resume(&run_dir, false, &Device::Cpu).unwrap();
    assert_eq!(t.step_count(), 4);
    let m = Model::load(&run_dir.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(m.meta.info["steps"], 4);

    // a run without a weight average can start one later; it starts from the current weights
    assert!(t.weight_average().is_none() && !run_dir.join("ema.safetensors").exists());
    t.enable_weight_average(0.99).unwrap();
    t.checkpoint().unwrap();
    assert_eq!(Model::load(&run_dir.join("ema.safetensors"), &Device::Cpu).unwrap().id(), m.id());
    train(&mut t, &Schedule { steps: 6, checkpoint_every: 0, val_every: 0, log_every: 10 }, &AtomicBool::new(false), &mut |_| {}).unwrap();
    drop(t);
    let t = Trainer::resume(&run_dir, false, &Device::Cpu).unwrap();
    assert_eq!(t.weight_average().map(|e| (e.decay, e.since_step)), Some((0.99, 4)));
    // a damaged average is named when the run is resumed
    std::fs::write(run_dir.join("ema.safetensors"), b"not a model").unwrap();
    let e = format!("{:#}", Trainer::resume(&run_dir, false, &Device::Cpu).err().unwrap());
    assert!(e.contains("weight average"), "{e}");
}

#[test]
fn train_bad_setups_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data);

    let err = |r: anyhow::Result<Trainer>| format!("{:#}", r.err().expect("should fail"));
    let e = err(Trainer::resume(&dir.path().join("nothing"), false, &Device::Cpu));
    assert!(e.contains("not a training run"), "{e}");

    let mut s = settings(&data);
    s.window = 100;
    let e = err(Trainer::create(&dir.path().join("a"), s, false, &Device::Cpu));
    assert!(e.contains("multiple of the model's length multiple"), "{e}");

    let e = err(Trainer::create(&dir.path().join("b"), settings(&dir.path().join("no-data")), false, &Device::Cpu));
    assert!(e.contains("not found"), "{e}");

    let mut s = settings(&data);
    s.window = 32 * 1024; // longer than every track
    let e = err(Trainer::create(&dir.path().join("c"), s, false, &Device::Cpu));
    assert!(e.contains("shorter") && e.contains("training window"), "{e}");

    let run_dir = dir.path().join("d");
    Trainer::create(&run_dir, settings(&data), false, &Device::Cpu).unwrap();
    let e = err(Trainer::create(&run_dir, settings(&data), false, &Device::Cpu));
    assert!(e.contains("--resume"), "{e}");
}

/// `Trainer::create_from` (`msdm train --init`): a new run starts from a model file's weights,
/// with its own σ distribution; a model of another network is refused with a clear error.
#[test]
fn train_can_start_from_a_model_file() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    write_dataset(&root);
    let init_path = tmp.path().join("init.safetensors");
    let init = Model::random(ModelConfig::tiny(), 7, &Device::Cpu).unwrap();
    init.save(&init_path, msdm::model_file::StoreDType::F32).unwrap();
    let init = Model::load(&init_path, &Device::Cpu).unwrap();

    let mut s = settings(&root);
    s.config.diffusion_sigma_distribution = msdm::config::SigmaDistribution { mean: -1.0, std: 1.6 };
    let dir = tmp.path().join("run");
    let mut trainer = Trainer::create_from(&dir, s.clone(), Some(&init), true, &Device::Cpu).unwrap();
    // the step-0 checkpoint holds the initial model's weights, not a random initialisation
    assert_eq!(weights_bits(&dir.join("model.safetensors")), weights_bits(&init_path));
    let fresh = tmp.path().join("fresh");
    Trainer::create(&fresh, s.clone(), true, &Device::Cpu).unwrap();
    assert_ne!(weights_bits(&fresh.join("model.safetensors")), weights_bits(&init_path));
    // it trains, and the run keeps its own σ distribution
    let losses = run(&mut trainer, 2);
    assert!(!losses.is_empty() && losses.iter().all(|(_, l)| l.is_finite()), "{losses:?}");
    assert_eq!(trainer.settings().config.diffusion_sigma_distribution, s.config.diffusion_sigma_distribution);
    // the run resumes (its checkpoints carry the run's config, not the initial model's)
    drop(trainer);
    let resumed = Trainer::resume(&dir, true, &Device::Cpu).unwrap();
    assert_eq!(resumed.step_count(), 2);
    assert_eq!(Model::load(&dir.join("model.safetensors"), &Device::Cpu).unwrap().config, s.config);

    let mut other = settings(&root);
    other.config.channels *= 2;
    let err = Trainer::create_from(&tmp.path().join("other"), other, Some(&init), true, &Device::Cpu).err().expect("another network must be refused");
    assert!(err.to_string().contains("network differs"), "{err}");
    assert!(!tmp.path().join("other").exists(), "a refused run must not leave a directory behind");
}

/// A per-stem σ run (`stem_sigmas`, issue 15) fine-tuned from a reference-style model: the step-0
/// checkpoint holds the model's weights unchanged plus a stem embedding that starts at zero; it
/// trains, resumes bit for bit, and its files say the network takes per-stem σ.
#[test]
fn a_per_stem_run_starts_from_a_reference_model() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    write_dataset(&root);
    let init_path = tmp.path().join("init.safetensors");
    Model::random(ModelConfig::tiny(), 7, &Device::Cpu).unwrap().save(&init_path, msdm::model_file::StoreDType::F32).unwrap();
    let init = Model::load(&init_path, &Device::Cpu).unwrap();

    let mut s = settings(&root);
    s.config.stem_sigmas = true;
    let dir = tmp.path().join("run");
    let mut trainer = Trainer::create_from(&dir, s.clone(), Some(&init), true, &Device::Cpu).unwrap();
    let start = weights_bits(&dir.join("model.safetensors"));
    let reference = weights_bits(&init_path);
    let (added, kept): (Vec<_>, Vec<_>) = start.into_iter().partition(|(n, _)| n.starts_with("stem_sigmas."));
    assert_eq!(kept, reference, "the reference weights must be carried over unchanged");
    let zero = |name: &str| added.iter().find(|(n, _)| n == name).unwrap().1.iter().all(|&b| f32::from_bits(b) == 0.0);
    assert!(zero("stem_sigmas.to_features.weight") && zero("stem_sigmas.to_features.bias"));

    let losses = run(&mut trainer, 3);
    assert!(!losses.is_empty() && losses.iter().all(|(_, l)| l.is_finite()), "{losses:?}");
    let trained = weights_bits(&dir.join("model.safetensors"));
    assert!(!trained.iter().find(|(n, _)| n == "stem_sigmas.to_features.weight").unwrap().1.iter().all(|&b| b == 0), "the stem embedding did not train");
    drop(trainer);
    let mut resumed = Trainer::resume(&dir, true, &Device::Cpu).unwrap();
    assert_eq!(resumed.step_count(), 3);
    let model = Model::load(&dir.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(model.config.stem_sigmas && model.denoiser.net.takes_stem_sigmas());
    run(&mut resumed, 4);

    // a reference-style run cannot start from a per-stem model (it would drop trained weights)
    let per_stem = Model::load(&dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let err = Trainer::create_from(&tmp.path().join("back"), settings(&root), Some(&per_stem), true, &Device::Cpu).err().expect("refused");
    assert!(err.to_string().contains("network differs"), "{err}");
}
