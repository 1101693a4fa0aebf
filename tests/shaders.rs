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
    assert_eq!(Kernel::ALL.len(), 1);
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
