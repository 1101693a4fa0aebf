//! Every kernel family's WGSL parses and validates with naga under baseline capabilities (no
//! shader-f16, no subgroups), for each specialisation the launchers use; f16 variants validate
//! with exactly the shader-f16 capability added. WGSL that mirrors Rust (uniform parameters,
//! the weight-type table, constants, entry points) equals it.

use super::{Kernel, PipelineKey, Variant};
use crate::ops::quant_decode::DECODERS;
use mlmf_core::DType;

type Constants = Vec<(&'static str, f64)>;

/// Parse and validate `kernel`'s `variant`, then specialise every entry point with each of
/// `specialisations`.
fn validate(kernel: Kernel, variant: Variant, specialisations: &[Constants]) {
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
    for constants in specialisations {
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
}

/// The weight types a family that reads blocks is built for, as the launchers specialise it
/// (quant_decode.wgsl's `TYPE` has no default); one empty set for the other families.
fn weight_types(kernel: Kernel) -> Vec<Constants> {
    let overrides = module(kernel).overrides;
    if !overrides
        .iter()
        .any(|(_, o)| o.name.as_deref() == Some("TYPE"))
    {
        return vec![Vec::new()];
    }
    DECODERS
        .iter()
        .filter(|d| kernel != Kernel::Dequant || d.group)
        .map(|d| {
            let key = d.specialise(PipelineKey::new(kernel, ""));
            let mut constants: Constants = key
                .constants
                .iter()
                .map(|&(n, bits)| (n, f64::from_bits(bits)))
                .collect();
            if kernel == Kernel::Dequant {
                constants.push(("BLOCK_BYTES", d.dtype.block_bytes() as f64));
                constants.push(("BLOCK_ELEMS", d.dtype.block_elems() as f64));
            }
            constants
        })
        .collect()
}

/// The specialisations the launchers use beside the weight type: workgroup sizes for every
/// family, and each family's own overrides.
fn specialisations(kernel: Kernel) -> Vec<Constants> {
    if kernel == Kernel::Matmul {
        return matmul_specialisations();
    }
    let mut out = vec![Vec::new()];
    for wg in [32.0, 64.0, 256.0] {
        out.push(vec![("WG", wg)]);
        if matches!(kernel, Kernel::Norm | Kernel::Softmax) {
            for per_row in [0.0, 1.0] {
                out.push(vec![("WG", wg), ("ROW_PER_INVOCATION", per_row)]);
            }
        }
        if kernel == Kernel::Conv {
            // conv2d_rows' kernel widths and strides, up to its widest row (24 columns).
            for (kw, stride) in [(1.0, 1.0), (3.0, 2.0), (5.0, 1.0), (3.0, 3.0)] {
                out.push(vec![("WG", wg), ("KW", kw), ("STRIDE", stride)]);
            }
        }
        if kernel == Kernel::QMatmul {
            for batch in [1.0, 8.0, 16.0] {
                for per_row in [0.0, 1.0] {
                    let c = [("MAX_BATCH", batch), ("ROW_PER_INVOCATION", per_row)];
                    out.push([vec![("WG", wg)], c.to_vec()].concat());
                }
            }
        }
    }
    out
}

#[test]
fn every_kernel_family_validates() {
    for &kernel in Kernel::ALL {
        let mut all = Vec::new();
        for types in weight_types(kernel) {
            for constants in specialisations(kernel) {
                all.push([types.clone(), constants].concat());
            }
        }
        for variant in Variant::ALL {
            if kernel.source_of(variant).is_some() {
                validate(kernel, variant, &all);
            }
        }
    }
}

/// `matmul.wgsl` with every override the launcher sets: the tile sizes it uses and others that
/// fit the baseline 16 KiB of workgroup memory, each layout, bias and operand type.
fn matmul_specialisations() -> Vec<Constants> {
    let mut out = Vec::new();
    for (wg_x, wg_y, tk) in [(8.0, 8.0, 32.0), (16.0, 8.0, 16.0), (4.0, 4.0, 8.0)] {
        for trans_a in [0.0, 1.0] {
            for trans_b in [0.0, 1.0] {
                for (bias, a_type, b_type) in [(0.0, 0.0, 0.0), (1.0, 1.0, 2.0), (2.0, 2.0, 1.0)] {
                    out.push(vec![
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
                    ]);
                }
            }
        }
    }
    out
}

fn module(kernel: Kernel) -> naga::Module {
    naga::front::wgsl::parse_str(kernel.source()).unwrap()
}

/// Bytes of the WGSL struct `Params` of `kernel`.
fn params_span(kernel: Kernel) -> u32 {
    let module = module(kernel);
    let span = module.types.iter().find_map(|(_, t)| match &t.inner {
        naga::TypeInner::Struct { span, .. } if t.name.as_deref() == Some("Params") => Some(*span),
        _ => None,
    });
    span.unwrap_or_else(|| panic!("{} has no Params", kernel.name()))
}

/// Every family's uniform `Params` has the size of its row in the family table, which its
/// launcher asserts for the Rust struct, a multiple of 16 bytes.
#[test]
fn params_mirror_the_family_table() {
    for &kernel in Kernel::ALL {
        let span = params_span(kernel);
        assert_eq!(span as usize, kernel.params_bytes(), "{}", kernel.name());
        assert_eq!(span % 16, 0, "{}", kernel.name());
    }
}

/// `shaders/matmul.wgsl` and `shaders/elementwise.wgsl` mirror their launchers: the register
/// block (TM x TN) the launcher's tile arithmetic assumes, and the entry points
/// `ops::elementwise` names.
#[test]
fn matmul_and_elementwise_mirror_their_launchers() {
    let constants = u32_constants(Kernel::Matmul);
    assert!(constants.contains(&("TM".to_string(), crate::ops::matmul::TM)));
    assert!(constants.contains(&("TN".to_string(), crate::ops::matmul::TN)));
    assert_eq!(entry_points(Kernel::Matmul), ["matmul"]);
    let mut names = entry_points(Kernel::Elementwise);
    names.sort();
    assert_eq!(
        names,
        ["add", "gelu", "gelu_tanh", "mul", "relu6", "scale", "tanh"]
    );
}

/// The shared decoders (`shaders/quant_decode.wgsl`) are part of every family that reads weight
/// blocks, which the validation above then checks them through, and of no other.
#[test]
fn shared_decoders_are_in_every_family_that_reads_blocks() {
    let decode = "fn decode_q4_k(b: u32, j: u32) -> f32";
    for &kernel in Kernel::ALL {
        let n = kernel.source().matches(decode).count();
        let want = usize::from(matches!(
            kernel,
            Kernel::Dequant | Kernel::QMatmul | Kernel::Embedding
        ));
        assert_eq!(n, want, "{}", kernel.name());
    }
}

/// `shaders/quant_decode.wgsl` mirrors the table in `ops/quant_decode.rs`: one `T_<TYPE>`
/// constant per row with the row's code, `decode_<type>` for every row and `group_<type>`
/// exactly for the rows with a group decoder, and the `decode` and `decode_group` switches
/// send each code to its type's function.
#[test]
fn quant_decode_wgsl_mirrors_the_decoder_table() {
    let module = module(Kernel::QMatmul);
    let codes: Vec<(String, u32)> = u32_constants(Kernel::QMatmul)
        .into_iter()
        .filter(|(n, _)| n.starts_with("T_"))
        .collect();
    assert_eq!(codes.len(), DECODERS.len());
    let function = |name: &str| {
        module
            .functions
            .iter()
            .any(|(_, f)| f.name.as_deref() == Some(name))
    };
    for d in DECODERS {
        let ty = d.dtype.name().to_lowercase();
        let constant = format!("T_{}", d.dtype.name());
        assert!(
            codes.contains(&(constant.clone(), d.code)),
            "{constant} is not {}",
            d.code
        );
        assert!(function(&format!("decode_{ty}")), "decode_{ty} missing");
        assert_eq!(function(&format!("group_{ty}")), d.group, "group_{ty}");
    }
    for (dispatch, prefix, rows) in [
        ("decode", "decode_", DECODERS.len()),
        (
            "decode_group",
            "group_",
            DECODERS.iter().filter(|d| d.group).count(),
        ),
    ] {
        let cases = switch_calls(&module, dispatch);
        assert_eq!(cases.len(), rows, "{dispatch}");
        for (code, called) in cases {
            let d = DECODERS.iter().find(|d| d.code == code).unwrap();
            assert_eq!(called, format!("{prefix}{}", d.dtype.name().to_lowercase()));
        }
    }
}

/// The `(case value, called function)` pairs of the switch in function `name`.
fn switch_calls(module: &naga::Module, name: &str) -> Vec<(u32, String)> {
    let (_, f) = module
        .functions
        .iter()
        .find(|(_, f)| f.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no fn {name}"));
    let cases = f
        .body
        .iter()
        .find_map(|s| match s {
            naga::Statement::Switch { cases, .. } => Some(cases),
            _ => None,
        })
        .unwrap_or_else(|| panic!("fn {name} has no switch"));
    cases
        .iter()
        .filter_map(|c| match c.value {
            naga::SwitchValue::U32(v) => {
                let called = c.body.iter().find_map(|s| match s {
                    naga::Statement::Call { function, .. } => {
                        module.functions[*function].name.clone()
                    }
                    _ => None,
                });
                Some((v, called.unwrap_or_default()))
            }
            _ => None,
        })
        .collect()
}

/// The families that read blocks have one entry point each, specialised per weight type:
/// qmatmul and embedding take every row of the decoder table (F32, F16, BF16 and the 22 block
/// types), dequant the rows with a group decoder, all of which qmatmul takes.
#[test]
fn block_families_take_the_decoder_table() {
    assert_eq!(entry_points(Kernel::Dequant), ["dequant"]);
    assert_eq!(entry_points(Kernel::QMatmul), ["qmatmul"]);
    assert_eq!(entry_points(Kernel::Embedding), ["embedding"]);
    let decodes = |d: DType| DECODERS.iter().find(|r| r.dtype == d);
    let (mut dequant, mut qmatmul) = (0, 0);
    for dtype in DType::all() {
        let row = decodes(dtype);
        assert_eq!(
            crate::ops::qmatmul::supports(dtype),
            row.is_some(),
            "{dtype}"
        );
        assert_eq!(
            crate::ops::embedding::supports(dtype),
            row.is_some(),
            "{dtype}"
        );
        assert_eq!(
            crate::ops::dequant::supports(dtype),
            row.is_some_and(|r| r.group),
            "{dtype}"
        );
        qmatmul += usize::from(row.is_some());
        dequant += usize::from(row.is_some_and(|r| r.group));
    }
    assert_eq!((dequant, qmatmul), (22, 25));
}

/// The f16 variant is the written source with f16 enabled and the `Out` alias switched, and
/// needs shader-f16: it fails baseline validation, so the F32 source cannot use f16 by accident.
#[test]
fn f16_variants_substitute_only_the_output_type() {
    assert!(Kernel::Convert.source_of(Variant::F16).is_none());
    let kernel = Kernel::Dequant;
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
        "dequant f16 validated without shader-f16"
    );
}

#[test]
fn convert_has_an_entry_point_per_source_dtype() {
    let names = entry_points(Kernel::Convert);
    for dtype in DType::all().filter(|d| crate::ops::convert::supports(*d)) {
        let want = match dtype {
            DType::Bool => "u8_to_f32".to_string(),
            d => format!("{}_to_f32", d.name().to_lowercase()),
        };
        assert!(names.contains(&want), "missing {want}");
    }
}

/// The `u32` constants a module declares, by name.
fn u32_constants(kernel: Kernel) -> Vec<(String, u32)> {
    let module = module(kernel);
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
    module(kernel)
        .entry_points
        .iter()
        .map(|e| e.name.clone())
        .collect()
}

/// `shaders/lora.wgsl` mirrors `ops::lora`: its `NO_ADAPTER` and the five entry points the
/// launcher uses.
#[test]
fn lora_mirrors_its_launcher() {
    let constants = u32_constants(Kernel::Lora);
    assert!(constants.contains(&("NO_ADAPTER".to_string(), crate::ops::lora::NO_ADAPTER)));
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

/// The neural-network families have the entry points their launchers name
/// (`src/ops/{norm,softmax,attention,conv,fusion}.rs`).
#[test]
fn nn_families_mirror_their_launchers() {
    for (kernel, entries) in [
        (Kernel::Norm, &["layer_norm", "rms_norm"][..]),
        (Kernel::Softmax, &["softmax"][..]),
        (
            Kernel::Attention,
            &[
                "attention_scores",
                "attention_weighted",
                "mha_fused",
                "mha_fused_combine",
                "mha_scores",
            ][..],
        ),
        (Kernel::Conv, &["avg_pool", "conv2d", "conv2d_rows"][..]),
        (Kernel::Fusion, &["concat", "weighted_sum"][..]),
    ] {
        let mut names = entry_points(kernel);
        names.sort();
        assert_eq!(names, entries, "{}", kernel.name());
    }
    let constants = u32_constants(Kernel::Attention);
    let fused = crate::ops::attention::FUSED_DIMS as u32;
    assert!(constants.contains(&("FUSED_DIMS".to_string(), fused)));
}

/// The families that read weight blocks, and only they, end with the `grids` binding, and
/// `shaders/quant_decode.wgsl` places each i-quant table where `ops::iq_grids` lays it out.
#[test]
fn grid_offsets_mirror_iq_grids() {
    use super::Binding;
    for &kernel in Kernel::ALL {
        let reads = kernel
            .source()
            .contains("fn decode_iq2_xxs(b: u32, j: u32) -> f32");
        assert_eq!(kernel.reads_blocks(), reads, "{}", kernel.name());
        if reads {
            let module = module(kernel);
            let n = kernel.bindings().len() as u32 - 1;
            assert_eq!(kernel.bindings().last(), Some(&Binding::ReadOnly));
            let grids = module
                .global_variables
                .iter()
                .find_map(|(_, v)| (v.name.as_deref() == Some("grids")).then_some(v.binding));
            assert_eq!(
                grids,
                Some(Some(naga::ResourceBinding {
                    group: 0,
                    binding: n
                })),
                "{}",
                kernel.name()
            );
            let constants = u32_constants(kernel);
            for o in &crate::ops::iq_grids::OFFSETS {
                assert!(
                    constants.contains(&(o.wgsl.to_string(), o.first as u32)),
                    "{}: {} should be {}",
                    kernel.name(),
                    o.wgsl,
                    o.first
                );
            }
        }
    }
}
