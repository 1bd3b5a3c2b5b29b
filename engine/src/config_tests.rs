//! The model config: presets, reference keys, limits and the training config files.

use super::*;

#[test]
fn sizes_from_files_are_bounded_before_any_arithmetic() {
    let err = |f: &dyn Fn(&mut ModelConfig)| {
        let mut c = ModelConfig::paper();
        f(&mut c);
        format!("{:#}", c.validate().unwrap_err())
    };
    assert!(err(&|c| c.resnet_groups = 0).contains("resnet_groups must be positive"));
    let e = err(&|c| c.channels = usize::MAX);
    assert!(e.contains("`channels` is 18446744073709551615, more than 4096 (MAX_CONFIG_SIZE)"), "{e}");
    let e = err(&|c| c.multipliers[3] = 1 << 40);
    assert!(e.contains("`multipliers` is 1099511627776"), "{e}");
    let e = err(&|c| c.factors = vec![4096; 6]);
    assert!(e.contains("(MAX_LENGTH_MULTIPLE)"), "{e}");
    let e = err(&|c| c.patch_blocks = 64);
    assert!(e.contains("(MAX_LENGTH_MULTIPLE)"), "{e}");
    let e = err(&|c| c.diffusion_sigma_data = f64::INFINITY);
    assert!(e.contains("must be finite"), "{e}");
    ModelConfig::paper().validate().unwrap();
}

#[test]
fn reference_yaml_keys_parse() {
    let json = r#"{"in_channels":4,"channels":256,"patch_factor":16,"patch_blocks":1,
        "resnet_groups":8,"kernel_multiplier_downsample":2,"kernel_sizes_init":[1,3,7],
        "multipliers":[1,2,4,4,4,4,4],"factors":[4,4,4,2,2,2],"num_blocks":[2,2,2,2,2,2],
        "attentions":[false,false,false,true,true,true],"attention_heads":8,"attention_features":128,
        "attention_multiplier":2,"use_nearest_upsample":false,"use_skip_scale":true,
        "use_attention_bottleneck":true,"diffusion_sigma_data":0.2,
        "diffusion_sigma_distribution":{"mean":-3.0,"std":1.0},"learning_rate":1e-4,"beta1":0.9,"beta2":0.99}"#;
    let cfg = ModelConfig::from_json(json).unwrap();
    assert_eq!(cfg.length_multiple(), 8192);
    let mut p = ModelConfig::paper();
    p.kernel_sizes_init = Some(vec![1, 3, 7]);
    assert_eq!(cfg, p);
    let ints = json.replace("[false,false,false,true,true,true]", "[0,0,0,1,1,1]");
    assert_eq!(ModelConfig::from_json(&ints).unwrap().attentions, p.attentions);
}

#[test]
fn presets_validate_and_bad_configs_fail() {
    for c in [ModelConfig::tiny(), ModelConfig::small(), ModelConfig::paper(), ModelConfig::paper_isdm()] {
        c.validate().unwrap();
    }
    let mut bad = ModelConfig::tiny();
    bad.factors.pop();
    assert!(bad.validate().unwrap_err().to_string().contains("entries"));
    let mut odd = ModelConfig::small();
    odd.channels = 96;
    let err = odd.validate().unwrap_err().to_string();
    assert!(err.contains("GroupNorm(4)") && err.contains("try channels 64 or 128"), "{err}");
}

/// tools/train/wide-sigma.json (how the bundled model was fine-tuned), wide128.json (the next
/// size up) and stem-sigmas.json (the per-stem σ fine-tuning) are the `small` preset with only
/// the changes the model card names.
#[test]
fn the_training_configs_are_the_small_preset_with_the_documented_changes() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tools/train");
    let mut expected = ModelConfig::small();
    expected.diffusion_sigma_distribution = SigmaDistribution { mean: -2.0, std: 1.8 };
    assert_eq!(ModelConfig::from_name_or_file(&format!("{dir}/wide-sigma.json")).unwrap(), expected);
    let wide = expected.clone();
    expected.channels = 128;
    assert_eq!(ModelConfig::from_name_or_file(&format!("{dir}/wide128.json")).unwrap(), expected);
    // the per-stem σ fine-tuning (issue 15): wide-sigma with the stem embedding and the task mixture
    let stems = ModelConfig { stem_sigmas: true, stem_tasks: Some(StemTaskMix::default()), ..wide };
    assert_eq!(ModelConfig::from_name_or_file(&format!("{dir}/stem-sigmas.json")).unwrap(), stems);
    // its second recipe: more conditional items, half of them one stem left, at σ ~ LogNormal(−1.2, 1)
    let mix = StemTaskMix {
        joint: 0.3,
        conditional: 0.6,
        independent: 0.1,
        one_left: 0.5,
        conditional_sigma: Some(SigmaDistribution { mean: -1.2, std: 1.0 }),
        one_left_weights: None,
    };
    let v2 = ModelConfig { stem_tasks: Some(mix), ..stems };
    assert_eq!(ModelConfig::from_name_or_file(&format!("{dir}/stem-sigmas-v2.json")).unwrap(), v2);
    // its third: the second with the loss weighted for the stems' RMS (0.05) instead of σ_data 0.2
    let v3 = ModelConfig { loss_sigma_data: Some(0.05), ..v2.clone() };
    assert_eq!(ModelConfig::from_name_or_file(&format!("{dir}/stem-sigmas-v3.json")).unwrap(), v3);
    // its fourth: the second with the conditional items at σ ~ LogNormal(0.7, 1) (median 2), where
    // the harmony probe shows imputation needs the other stems
    let mut mix4 = mix;
    mix4.conditional_sigma = Some(SigmaDistribution { mean: 0.7, std: 1.0 });
    let v4 = ModelConfig { stem_tasks: Some(mix4), ..v2.clone() };
    assert_eq!(ModelConfig::from_name_or_file(&format!("{dir}/stem-sigmas-v4.json")).unwrap(), v4);
    // its fifth: the fourth tilted to the headline job, a quarter of all items a bass under the rest
    let mix5 = StemTaskMix { joint: 0.25, conditional: 0.65, one_left: 0.7, one_left_weights: Some([0.55, 0.15, 0.15, 0.15]), ..mix4 };
    let v5 = ModelConfig { stem_tasks: Some(mix5), ..v4.clone() };
    assert_eq!(ModelConfig::from_name_or_file(&format!("{dir}/stem-sigmas-v5.json")).unwrap(), v5);
    for bad in [[0.0; 4], [1.0, -0.5, 0.0, 0.0], [f64::NAN, 1.0, 1.0, 1.0]] {
        let stem_tasks = Some(StemTaskMix { one_left_weights: Some(bad), ..mix5 });
        let err = ModelConfig { stem_tasks, ..v4.clone() }.validate().unwrap_err().to_string();
        assert!(err.contains("one_left_weights"), "{err}");
    }
    let err = ModelConfig { in_channels: 2, ..v5.clone() }.validate().unwrap_err().to_string();
    assert!(err.contains("one weight per stem"), "{err}");
    for bad in [0.0, -0.1, f64::NAN] {
        let err = ModelConfig { loss_sigma_data: Some(bad), ..v2.clone() }.validate().unwrap_err().to_string();
        assert!(err.contains("loss_sigma_data"), "{err}");
    }
    // a misspelt knob is refused, not ignored
    let text = std::fs::read_to_string(format!("{dir}/stem-sigmas-v2.json")).unwrap().replace("one_left", "one-left");
    let err = format!("{:#}", serde_json::from_str::<ModelConfig>(&text).unwrap_err());
    assert!(err.contains("one-left"), "{err}");
}
