//! Reading and writing real audio files (fixtures made by tests/fixtures/audio/make.sh).

/// Named `audio` so that `cargo test -p msdm --release audio` runs these tests too.
mod audio {
    use msdm::audio::{
        ensure_output_dir, read_audio, read_audio_with, validate_samples, write_wav, AudioBuffer,
        OutputPolicy, ReadOptions, SampleFormat,
    };
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/audio")
            .join(name)
    }

    /// Frequency from rising zero crossings between the first and last one (ignoring the edges).
    fn frequency(x: &[f32], rate: u32) -> f64 {
        let edge = x.len() / 10;
        let x = &x[edge..x.len() - edge];
        let ups: Vec<usize> = (1..x.len())
            .filter(|&i| x[i - 1] < 0.0 && x[i] >= 0.0)
            .collect();
        assert!(ups.len() >= 3, "no periodic signal");
        (ups.len() - 1) as f64 * rate as f64 / (ups[ups.len() - 1] - ups[0]) as f64
    }

    fn rms(x: &[f32]) -> f64 {
        (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    /// (file, rate, frequencies per channel, frames or None if approximate, expected tolerance).
    #[test]
    fn reads_every_format() {
        let cases: [(&str, u32, &[f64], usize); 7] = [
            ("sine_44k1_stereo_i16.wav", 44100, &[440.0, 660.0], 22050),
            ("sine_48k_mono_i24.wav", 48000, &[1000.0], 24000),
            ("sine_16k_3ch_i32.wav", 16000, &[200.0, 300.0, 500.0], 4000),
            ("sine_22k05_mono_f32.wav", 22050, &[2000.0], 5512),
            ("sine_48k_mono.flac", 48000, &[440.0], 48000),
            ("sine_22k05_mono.mp3", 22050, &[440.0], 22050),
            ("sine_44k1_stereo.ogg", 44100, &[440.0, 880.0], 44100),
        ];
        for (name, rate, freqs, frames) in cases {
            let a = read_audio(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert_eq!(a.rate, rate, "{name}");
            assert_eq!(a.num_channels(), freqs.len(), "{name}");
            assert_eq!(a.frames(), frames, "{name}: frame count (gapless decoding)");
            for (c, &f) in freqs.iter().enumerate() {
                let got = frequency(&a.channels[c], rate);
                assert!(
                    (got - f).abs() < 0.01 * f,
                    "{name} channel {c}: {got:.1} Hz, want {f} Hz"
                );
                // sox "gain -6" sine: amplitude 0.5, RMS 0.354.
                let level = rms(&a.channels[c]);
                assert!(
                    (level - 0.354).abs() < 0.02,
                    "{name} channel {c}: rms {level:.3}"
                );
            }
            assert!(a.peak() <= 1.0 && !a.is_silent(1e-3), "{name}");
        }
    }

    /// Lossy files keep their timing: the decoded MP3/OGG line up with the analytic sine.
    #[test]
    fn lossy_files_are_not_shifted() {
        for (name, rate) in [
            ("sine_22k05_mono.mp3", 22050.0),
            ("sine_44k1_stereo.ogg", 44100.0),
        ] {
            let a = read_audio(&fixture(name)).unwrap();
            let x = &a.channels[0];
            let mid = x.len() / 4..3 * x.len() / 4;
            let want: Vec<f32> = mid
                .clone()
                .map(|i| (0.5 * (std::f64::consts::TAU * 440.0 * i as f64 / rate).sin()) as f32)
                .collect();
            let err: Vec<f32> = x[mid].iter().zip(&want).map(|(a, b)| a - b).collect();
            assert!(
                rms(&err) < 0.03,
                "{name}: rms error {:.4} vs an unshifted sine",
                rms(&err)
            );
        }
    }

    fn error_of(name: &str) -> String {
        let e = format!("{:#}", read_audio(&fixture(name)).expect_err(name));
        eprintln!("{name}: {e}");
        e
    }

    #[test]
    fn bad_files_give_clear_errors() {
        let e = error_of("does_not_exist.wav");
        assert!(
            e.contains("not found") && e.contains("does_not_exist.wav"),
            "{e}"
        );

        let e = error_of("garbage.wav");
        assert!(
            e.contains("garbage.wav") && e.contains("not a recognised audio file"),
            "{e}"
        );

        let e = error_of("truncated.wav");
        assert!(
            e.contains("truncated.wav") && e.contains("truncated") && e.contains("0.250 s"),
            "{e}"
        );

        let e = error_of("truncated.flac");
        assert!(
            e.contains("truncated.flac")
                && e.contains("truncated or damaged")
                && e.contains("1.000 s"),
            "{e}"
        );

        let e = error_of("damaged.mp3");
        assert!(e.contains("damaged.mp3") && e.contains("damaged"), "{e}");

        let e = error_of("empty.wav");
        assert!(
            e.contains("empty.wav") && e.contains("no audio samples"),
            "{e}"
        );

        let e = format!("{:#}", read_audio(&fixture("")).unwrap_err());
        assert!(e.contains("directory"), "{e}");
    }

    #[test]
    fn truncated_file_can_be_accepted_explicitly() {
        let opts = ReadOptions {
            allow_truncated: true,
            ..Default::default()
        };
        let a = read_audio_with(&fixture("truncated.wav"), &opts).unwrap();
        assert_eq!(a.rate, 22050);
        assert!(
            a.frames() > 2000 && a.frames() < 5512 / 2 + 1,
            "{} frames",
            a.frames()
        );
        assert!((frequency(&a.channels[0], 22050) - 440.0).abs() < 5.0);
    }

    #[test]
    fn refuses_audio_longer_than_the_limit() {
        let opts = ReadOptions {
            max_duration_s: 0.5,
            ..Default::default()
        };
        let e = format!(
            "{:#}",
            read_audio_with(&fixture("sine_48k_mono.flac"), &opts).unwrap_err()
        );
        assert!(
            e.contains("too long") && e.contains("sine_48k_mono.flac"),
            "{e}"
        );
        assert!(read_audio_with(&fixture("sine_44k1_stereo_i16.wav"), &opts).is_ok());
    }

    #[test]
    fn non_finite_samples_are_located() {
        let mut a = AudioBuffer::new(1000, vec![vec![0.0; 3000], vec![0.0; 3000]]);
        validate_samples(&a).unwrap();
        a.channels[1][2500] = f32::NAN;
        a.channels[0][2600] = f32::INFINITY;
        let e = format!("{:#}", validate_samples(&a).unwrap_err());
        assert!(
            e.contains("2.500000 s") && e.contains("channel 2") && e.contains("NaN"),
            "{e}"
        );

        // A float WAV holding a NaN is refused when read back.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nan.wav");
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 8000,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for i in 0..100 {
            w.write_sample(if i == 40 { f32::NAN } else { 0.1 })
                .unwrap();
        }
        w.finalize().unwrap();
        let e = format!("{:#}", read_audio(&path).unwrap_err());
        assert!(
            e.contains("nan.wav") && e.contains("sample 40") && e.contains("channel 1"),
            "{e}"
        );
        // ... and never written.
        assert!(write_wav(&dir.path().join("out.wav"), &a, SampleFormat::F32).is_err());
        assert!(!dir.path().join("out.wav").exists());
    }

    #[test]
    fn write_then_read_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let src = read_audio(&fixture("sine_44k1_stereo_i16.wav")).unwrap();
        for (format, tol) in [
            (SampleFormat::F32, 0.0),
            (SampleFormat::I16, 0.0),
            (SampleFormat::I24, 0.0),
        ] {
            let path = dir.path().join(format!("{format:?}.wav"));
            write_wav(&path, &src, format).unwrap();
            let back = read_audio(&path).unwrap();
            assert_eq!(
                (back.rate, back.num_channels(), back.frames()),
                (44100, 2, 22050)
            );
            let err = src
                .channels
                .iter()
                .flatten()
                .zip(back.channels.iter().flatten())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(err <= tol, "{format:?}: max error {err}");
        }
        // Integer formats clip instead of wrapping; float keeps values beyond full scale.
        let loud = AudioBuffer::new(8000, vec![vec![1.5, -1.5, 0.25]]);
        let path = dir.path().join("loud.wav");
        write_wav(&path, &loud, SampleFormat::I16).unwrap();
        let back = read_audio(&path).unwrap().channels.remove(0);
        assert!(
            back[0] > 0.999 && back[1] == -1.0 && back[2] == 0.25,
            "{back:?}"
        );
        write_wav(&path, &loud, SampleFormat::F32).unwrap();
        assert_eq!(
            read_audio(&path).unwrap().channels[0],
            vec![1.5, -1.5, 0.25]
        );
        // No temporary files are left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
    }

    #[test]
    fn output_policy_protects_existing_stems() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("song_stems");
        let names = ["bass.wav", "drums.wav"];
        let paths = ensure_output_dir(&out, &names, OutputPolicy::Refuse).unwrap();
        assert!(out.is_dir());
        let audio = AudioBuffer::new(22050, vec![vec![0.1; 100]]);
        write_wav(&paths[1], &audio, SampleFormat::F32).unwrap();

        let e = format!(
            "{:#}",
            ensure_output_dir(&out, &names, OutputPolicy::Refuse).unwrap_err()
        );
        assert!(
            e.contains("drums.wav") && !e.contains("bass.wav") && e.contains("overwrite"),
            "{e}"
        );
        assert_eq!(
            read_audio(&paths[1]).unwrap().frames(),
            100,
            "existing stem untouched"
        );
        ensure_output_dir(&out, &names, OutputPolicy::Overwrite).unwrap();

        let file = dir.path().join("a_file");
        std::fs::write(&file, b"x").unwrap();
        assert!(ensure_output_dir(&file, &names, OutputPolicy::Overwrite).is_err());
    }
}
