//! Every kernel family's WGSL parses and validates with naga under baseline capabilities (no
//! shader-f16, no subgroups), for each specialisation the launchers use.

use mlmf::device::kernels::Kernel;

fn validate(kernel: Kernel, constants: &[(&str, f64)]) {
    let module = naga::front::wgsl::parse_str(kernel.source())
        .unwrap_or_else(|e| panic!("{}: {}", kernel.name(), e.emit_to_string(kernel.source())));
    let mut validator = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::default(),
    );
    let info = validator
        .validate(&module)
        .unwrap_or_else(|e| panic!("{}: {}", kernel.name(), e.emit_to_string(kernel.source())));
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
        .unwrap_or_else(|e| panic!("{}::{} with {constants:?}: {e}", kernel.name(), ep.name));
    }
}

#[test]
fn every_kernel_family_validates() {
    // Adding a family means adding it here and to Kernel::ALL.
    assert_eq!(Kernel::ALL.len(), 3);
    for kernel in Kernel::ALL {
        validate(kernel, &[]);
        for wg in [32.0, 64.0, 256.0] {
            validate(kernel, &[("WG", wg)]);
        }
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
    for dtype in mlmf::DType::all().filter(|d| mlmf::ops::convert::supports(*d)) {
        let want = match dtype {
            mlmf::DType::Bool => "u8_to_f32".to_string(),
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
    for dtype in mlmf::DType::all().filter(|d| mlmf::ops::dequant::supports(*d)) {
        let (kernel, entry) = mlmf::ops::dequant::kernel(dtype).unwrap();
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
            let dtype = mlmf::DType::from_name(ty)
                .unwrap_or_else(|| panic!("{}: {name} names no dtype", kernel.name()));
            assert_eq!(
                u64::from(*value),
                dtype.block_bytes(),
                "{}: {name}",
                kernel.name()
            );
            assert_eq!(dtype.block_elems(), elems, "{}: {ty}", kernel.name());
            assert_eq!(
                mlmf::ops::dequant::kernel(dtype).map(|(k, _)| k),
                Some(kernel),
                "{ty} is declared in shaders/{}.wgsl but routed elsewhere",
                kernel.name()
            );
            checked += 1;
        }
        assert_eq!(checked, 6, "{}", kernel.name());
    }
}
