//! Every kernel family's WGSL parses and validates with naga under baseline capabilities (no
//! shader-f16, no subgroups), for each specialisation the launchers use; f16 variants validate
//! with exactly the shader-f16 capability added.

use super::{Kernel, Variant};

fn validate(kernel: Kernel, variant: Variant, constants: &[(&str, f64)]) {
    let source = kernel.source_of(variant).unwrap();
    let what = format!("{} ({variant:?})", kernel.name());
    let module = naga::front::wgsl::parse_str(&source)
        .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(&source)));
    let capabilities = match variant {
        Variant::F32 => naga::valid::Capabilities::default(),
        Variant::F16 => {
            naga::valid::Capabilities::default() | naga::valid::Capabilities::SHADER_FLOAT16
        }
    };
    let mut validator =
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities);
    let info = validator
        .validate(&module)
        .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(&source)));
    let mut map = naga::back::PipelineConstants::default();
    for (name, value) in constants {
        map.insert(name.to_string(), *value);
    }
    for ep in &module.entry_points {
        naga::back::pipeline_constants::process_overrides(
            &module,
            &info,
            Some((ep.stage, &ep.name)),
            &map,
        )
        .unwrap_or_else(|e| panic!("{what}::{} with {constants:?}: {e}", ep.name));
    }
}

#[test]
fn every_kernel_family_validates() {
    // Adding a family means adding it here and to Kernel::ALL.
    assert_eq!(Kernel::ALL.len(), 12);
    for kernel in Kernel::ALL {
        let variants: &[Variant] = match kernel {
            Kernel::Dequant | Kernel::DequantK => &[Variant::F32, Variant::F16],
            _ => &[Variant::F32],
        };
        for &variant in variants {
            validate(kernel, variant, &[]);
            if kernel == Kernel::Matmul {
                validate_matmul_specialisations();
                continue;
            }
            for wg in [32.0, 64.0, 256.0] {
                validate(kernel, variant, &[("WG", wg)]);
                if matches!(kernel, Kernel::Norm | Kernel::Softmax) {
                    for per_row in [0.0, 1.0] {
                        validate(
                            kernel,
                            variant,
                            &[("WG", wg), ("ROW_PER_INVOCATION", per_row)],
                        );
                    }
                }
                if kernel == Kernel::Conv {
                    // conv2d_rows' kernel widths and strides, up to its widest row (24 columns).
                    for (kw, stride) in [(1.0, 1.0), (3.0, 2.0), (5.0, 1.0), (3.0, 3.0)] {
                        let constants = [("WG", wg), ("KW", kw), ("STRIDE", stride)];
                        validate(kernel, variant, &constants);
                    }
                }
                if kernel == Kernel::QMatmul {
                    for batch in [1.0, 8.0, 16.0] {
                        for per_row in [0.0, 1.0] {
                            let constants = [
                                ("WG", wg),
                                ("MAX_BATCH", batch),
                                ("ROW_PER_INVOCATION", per_row),
                            ];
                            validate(kernel, variant, &constants);
                        }
                    }
                }
            }
        }
    }
}

/// `matmul.wgsl` with every override the launcher sets: the tile sizes it uses and others that
/// fit the baseline 16 KiB of workgroup memory, each layout, bias and operand type.
fn validate_matmul_specialisations() {
    for (wg_x, wg_y, tk) in [(8.0, 8.0, 32.0), (16.0, 8.0, 16.0), (4.0, 4.0, 8.0)] {
        for trans_a in [0.0, 1.0] {
            for trans_b in [0.0, 1.0] {
                for (bias, a_type, b_type) in [(0.0, 0.0, 0.0), (1.0, 1.0, 2.0), (2.0, 2.0, 1.0)] {
                    let constants = [
                        ("WG_X", wg_x),
                        ("WG_Y", wg_y),
                        ("TK", tk),
                        ("TRANS_A", trans_a),
                        ("TRANS_B", trans_b),
                        // 2: a bias per row.
                        ("HAS_BIAS", f64::from(bias > 0.0)),
                        ("BIAS_PER_ROW", f64::from(bias > 1.0)),
                        ("A_TYPE", a_type),
                        ("B_TYPE", b_type),
                        ("BIAS_TYPE", a_type),
                    ];
                    validate(Kernel::Matmul, Variant::F32, &constants);
                }
            }
        }
    }
}

/// `shaders/matmul.wgsl` and `shaders/elementwise.wgsl` mirror their launchers: the register
/// block (TM x TN) the launcher's tile arithmetic assumes, the 32-byte parameters, and the
/// entry points `ops::elementwise` names.
#[test]
fn matmul_and_elementwise_mirror_their_launchers() {
    let constants = u32_constants(Kernel::Matmul);
    assert!(constants.contains(&("TM".to_string(), crate::ops::matmul::TM)));
    assert!(constants.contains(&("TN".to_string(), crate::ops::matmul::TN)));
    for kernel in [Kernel::Matmul, Kernel::Elementwise] {
        let module = naga::front::wgsl::parse_str(kernel.source()).unwrap();
        let span = module
            .types
            .iter()
            .find_map(|(_, t)| match &t.inner {
                naga::TypeInner::Struct { span, .. } if t.name.as_deref() == Some("Params") => {
                    Some(*span)
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(span, 32, "{}", kernel.name());
    }
    assert_eq!(entry_points(Kernel::Matmul), ["matmul"]);
    let mut names = entry_points(Kernel::Elementwise);
    names.sort();
    assert_eq!(names, ["add", "gelu", "gelu_tanh", "mul", "relu6", "scale"]);
}

/// The shared decoders (`shaders/quant_decode.wgsl`) are part of every family that reads weight
/// blocks, which the validation above then checks them through, and of no other.
#[test]
fn shared_decoders_are_in_every_family_that_reads_blocks() {
    let decode = "fn decode_q4_k(b: u32, j: u32) -> f32";
    for kernel in Kernel::ALL {
        let n = kernel.source().matches(decode).count();
        let want = usize::from(matches!(
            kernel,
            Kernel::Dequant | Kernel::DequantK | Kernel::QMatmul | Kernel::Embedding
        ));
        assert_eq!(n, want, "{}", kernel.name());
    }
}

/// `ops::qmatmul` has an entry point for every type it accepts, and every entry point serves a
/// type: F32, F16, BF16 and every type `ops::dequant` decodes.
#[test]
fn qmatmul_has_an_entry_point_per_weight_type() {
    let names = entry_points(Kernel::QMatmul);
    let mut served = 0;
    for dtype in mlmf_core::DType::all().filter(|d| crate::ops::qmatmul::supports(*d)) {
        let entry = crate::ops::qmatmul::entry(dtype).unwrap();
        assert_eq!(entry, format!("qmatmul_{}", dtype.name().to_lowercase()));
        assert!(names.iter().any(|e| e == entry), "{entry} missing");
        served += 1;
    }
    assert_eq!(served, names.len());
    assert_eq!(served, 15);
    for dtype in mlmf_core::DType::all().filter(|d| crate::ops::dequant::supports(*d)) {
        assert!(crate::ops::qmatmul::supports(dtype), "{dtype}");
    }
}

/// The f16 variant is the written source with f16 enabled and the `Out` alias switched, and
/// needs shader-f16: it fails baseline validation, so the F32 source cannot use f16 by accident.
#[test]
fn f16_variants_substitute_only_the_output_type() {
    assert!(Kernel::Convert.source_of(Variant::F16).is_none());
    for kernel in [Kernel::Dequant, Kernel::DequantK] {
        let f32 = kernel.source_of(Variant::F32).unwrap();
        let f16 = kernel.source_of(Variant::F16).unwrap();
        assert_eq!(f32.matches("alias Out = f32;").count(), 1);
        assert!(!f32.contains("enable f16"));
        assert_eq!(
            f16,
            format!(
                "enable f16;\n{}",
                f32.replace("alias Out = f32;", "alias Out = f16;")
            )
        );
        let module = naga::front::wgsl::parse_str(&f16).unwrap();
        let baseline = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::default(),
        )
        .validate(&module);
        assert!(
            baseline.is_err(),
            "{} f16 validated without shader-f16",
            kernel.name()
        );
    }
}

#[test]
fn convert_has_an_entry_point_per_source_dtype() {
    let module = naga::front::wgsl::parse_str(Kernel::Convert.source()).unwrap();
    let names: Vec<&str> = module
        .entry_points
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    for dtype in mlmf_core::DType::all().filter(|d| crate::ops::convert::supports(*d)) {
        let want = match dtype {
            mlmf_core::DType::Bool => "u8_to_f32".to_string(),
            d => format!("{}_to_f32", d.name().to_lowercase()),
        };
        assert!(names.contains(&want.as_str()), "missing {want}");
    }
}

/// The `u32` constants a module declares, by name.
fn u32_constants(kernel: Kernel) -> Vec<(String, u32)> {
    let module = naga::front::wgsl::parse_str(kernel.source()).unwrap();
    module
        .constants
        .iter()
        .filter_map(|(_, c)| match module.global_expressions[c.init] {
            naga::Expression::Literal(naga::Literal::U32(v)) => Some((c.name.clone()?, v)),
            _ => None,
        })
        .collect()
}

fn entry_points(kernel: Kernel) -> Vec<String> {
    let module = naga::front::wgsl::parse_str(kernel.source()).unwrap();
    module.entry_points.iter().map(|e| e.name.clone()).collect()
}

/// Every quantized type `ops::dequant` accepts has its entry point in the family it is routed
/// to, and every entry point of the two dequant families serves a type.
#[test]
fn dequant_families_have_an_entry_point_per_type() {
    let mut served = Vec::new();
    for dtype in mlmf_core::DType::all().filter(|d| crate::ops::dequant::supports(*d)) {
        let (kernel, entry) = crate::ops::dequant::kernel(dtype).unwrap();
        assert_eq!(entry, format!("dequant_{}", dtype.name().to_lowercase()));
        assert!(
            entry_points(kernel).iter().any(|e| e == entry),
            "{entry} is not in shaders/{}.wgsl",
            kernel.name()
        );
        served.push((kernel, entry.to_string()));
    }
    assert_eq!(served.len(), 12);
    for kernel in [Kernel::Dequant, Kernel::DequantK] {
        for e in entry_points(kernel) {
            assert!(served.contains(&(kernel, e.clone())), "{e} serves no dtype");
        }
    }
}

/// Block sizes written in WGSL (`<TYPE>_BYTES`, `BLOCK_ELEMS`) equal dtype.rs's table.
#[test]
fn dequant_block_constants_mirror_dtype_table() {
    for kernel in [Kernel::Dequant, Kernel::DequantK] {
        let constants = u32_constants(kernel);
        let elems = constants
            .iter()
            .find(|(n, _)| n == "BLOCK_ELEMS")
            .map(|&(_, v)| u64::from(v))
            .unwrap_or_else(|| panic!("{} has no BLOCK_ELEMS", kernel.name()));
        let mut checked = 0;
        for (name, value) in &constants {
            let Some(ty) = name.strip_suffix("_BYTES") else {
                continue;
            };
            let dtype = mlmf_core::DType::from_name(ty)
                .unwrap_or_else(|| panic!("{}: {name} names no dtype", kernel.name()));
            assert_eq!(
                u64::from(*value),
                dtype.block_bytes(),
                "{}: {name}",
                kernel.name()
            );
            assert_eq!(dtype.block_elems(), elems, "{}: {ty}", kernel.name());
            assert_eq!(
                crate::ops::dequant::kernel(dtype).map(|(k, _)| k),
                Some(kernel),
                "{ty} is declared in shaders/{}.wgsl but routed elsewhere",
                kernel.name()
            );
            checked += 1;
        }
        assert_eq!(checked, 6, "{}", kernel.name());
    }
}

/// `shaders/lora.wgsl` mirrors `ops::lora`: its `NO_ADAPTER`, its uniform parameters (48 bytes,
/// the size `ops::lora` asserts for its `Params`), and the five entry points the launcher uses.
#[test]
fn lora_mirrors_its_launcher() {
    let constants = u32_constants(Kernel::Lora);
    assert!(constants.contains(&("NO_ADAPTER".to_string(), crate::ops::lora::NO_ADAPTER)));
    let module = naga::front::wgsl::parse_str(Kernel::Lora.source()).unwrap();
    let span = module
        .types
        .iter()
        .find_map(|(_, t)| match &t.inner {
            naga::TypeInner::Struct { span, .. } if t.name.as_deref() == Some("Params") => {
                Some(*span)
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(span, 48);
    let mut names = entry_points(Kernel::Lora);
    names.sort();
    assert_eq!(
        names,
        [
            "lora_expand",
            "lora_merge_bf16",
            "lora_merge_f16",
            "lora_merge_f32",
            "lora_shrink"
        ]
    );
}

/// The neural-network families' uniform `Params` have the sizes their launchers assert for the
/// Rust side (`src/ops/{norm,softmax,embedding,attention,conv}.rs`), 16-byte multiples, and the
/// entry points the launchers name.
#[test]
fn nn_families_mirror_their_launchers() {
    for (kernel, size, entries) in [
        (Kernel::Norm, 16, &["layer_norm", "rms_norm"][..]),
        (Kernel::Softmax, 16, &["softmax"][..]),
        (Kernel::Embedding, 32, &[][..]),
        (
            Kernel::Attention,
            32,
            &["attention_scores", "attention_weighted"][..],
        ),
        (Kernel::Conv, 64, &["avg_pool", "conv2d", "conv2d_rows"][..]),
    ] {
        let module = naga::front::wgsl::parse_str(kernel.source()).unwrap();
        let span = module
            .types
            .iter()
            .find_map(|(_, t)| match &t.inner {
                naga::TypeInner::Struct { span, .. } if t.name.as_deref() == Some("Params") => {
                    Some(*span)
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(span, size, "{}", kernel.name());
        if !entries.is_empty() {
            let mut names = entry_points(kernel);
            names.sort();
            assert_eq!(names, entries, "{}", kernel.name());
        }
    }
    // Embedding serves exactly the types qmatmul reads, one entry point each.
    let names = entry_points(Kernel::Embedding);
    let mut served = 0;
    for dtype in mlmf_core::DType::all().filter(|d| crate::ops::embedding::supports(*d)) {
        let entry = crate::ops::embedding::entry(dtype).unwrap();
        assert_eq!(entry, format!("embedding_{}", dtype.name().to_lowercase()));
        assert!(names.iter().any(|e| e == entry), "{entry} missing");
        assert!(crate::ops::qmatmul::supports(dtype));
        served += 1;
    }
    assert_eq!(served, names.len());
    assert_eq!(served, 15);
}
