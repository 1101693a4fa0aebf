//! `ops::fusion` (concat along the last axis, weighted sum over modalities) on the GPU
//! (lavapipe here; also with 4 KiB pages, so operands span several) and through the CPU twins:
//! concat bit for bit against the rows copied by hand; the weighted sum within
//! `M eps sum_m |w_m x_m|` of the f64 sum (M roundings of products and partial sums, each at
//! most `u = eps / 2` of a partial sum no larger than that), with shared and per-row weights.

#[path = "../../../tests/common/mod.rs"]
mod common;

use common::random_f32;

use mlmf_core::Error;
use mlmf_gpu::ops::fusion;
use mlmf_gpu::{Device, GpuOptions, Tensor};

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_f32_vec().unwrap()
}

fn on(device: &Device, name: &str, dims: Vec<usize>, v: &[f32]) -> Tensor {
    Tensor::from_f32(name, dims, v)
        .unwrap()
        .to_device(device)
        .unwrap()
}

fn devices() -> Vec<Device> {
    let paged = Device::gpu_with(&GpuOptions {
        max_page_bytes: Some(4096),
        ..GpuOptions::default()
    })
    .unwrap();
    vec![Device::gpu().unwrap(), paged, Device::Cpu]
}

#[test]
fn concat_copies_rows_side_by_side() {
    for device in devices() {
        let what = device.describe();
        for (lead, widths) in [
            (vec![2], vec![64, 48, 40]),
            (vec![1], vec![1]),
            (vec![3, 5], vec![7, 1, 130]),
            // 2000 rows of 3 + 2: several 4 KiB pages per operand.
            (vec![2000], vec![3, 2]),
        ] {
            let rows: usize = lead.iter().product();
            let parts: Vec<Vec<f32>> = widths
                .iter()
                .enumerate()
                .map(|(i, &n)| random_f32(rows * n, 100 + i as u64))
                .collect();
            let tensors: Vec<Tensor> = parts
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (p, &n))| {
                    on(
                        &device,
                        &format!("x{i}"),
                        [lead.clone(), vec![n]].concat(),
                        p,
                    )
                })
                .collect();
            let refs: Vec<&Tensor> = tensors.iter().collect();
            let out = fusion::concat(&refs).unwrap();
            let total: usize = widths.iter().sum();
            assert_eq!(out.shape().dims(), [lead.clone(), vec![total]].concat());
            let mut want = Vec::new();
            for r in 0..rows {
                for (p, &n) in parts.iter().zip(&widths) {
                    want.extend_from_slice(&p[r * n..(r + 1) * n]);
                }
            }
            let got = f32s(&out);
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(g, w)| g.to_bits() == w.to_bits()),
                "{what}: concat {lead:?} {widths:?}"
            );
        }
    }
}

fn check_weighted_sum(
    what: &str,
    parts: &[Vec<f32>],
    w: &[f32],
    per_row: bool,
    cols: usize,
    got: &[f32],
) {
    let m = parts.len();
    let eps = f64::from(f32::EPSILON);
    assert_eq!(got.len(), parts[0].len(), "{what}: length");
    for (i, &g) in got.iter().enumerate() {
        let r = i / cols;
        let wm = |k: usize| f64::from(if per_row { w[r * m + k] } else { w[k] });
        let want: f64 = (0..m).map(|k| wm(k) * f64::from(parts[k][i])).sum();
        let mag: f64 = (0..m).map(|k| (wm(k) * f64::from(parts[k][i])).abs()).sum();
        let bound = m as f64 * eps * mag;
        let err = (f64::from(g) - want).abs();
        assert!(
            err <= bound,
            "{what}: element {i}: got {g:e}, want {want:e}, error {err:e} > {bound:e}"
        );
    }
}

#[test]
fn weighted_sum_within_its_bound() {
    for device in devices() {
        let what = device.describe();
        for (lead, cols, m) in [
            (vec![2], 10, 3),
            (vec![1], 1, 1),
            (vec![4, 3], 65, 5),
            (vec![1500], 3, 2),
        ] {
            let rows: usize = lead.iter().product();
            let dims = [lead.clone(), vec![cols]].concat();
            let parts: Vec<Vec<f32>> = (0..m)
                .map(|k| random_f32(rows * cols, 200 + k as u64))
                .collect();
            let tensors: Vec<Tensor> = parts
                .iter()
                .enumerate()
                .map(|(k, p)| on(&device, &format!("x{k}"), dims.clone(), p))
                .collect();
            let refs: Vec<&Tensor> = tensors.iter().collect();
            // Shared weights [M].
            let w = random_f32(m, 300);
            let wt = on(&device, "w", vec![m], &w);
            let out = fusion::weighted_sum(&refs, &wt).unwrap();
            assert_eq!(out.shape().dims(), &dims[..]);
            check_weighted_sum(
                &format!("{what}: shared"),
                &parts,
                &w,
                false,
                cols,
                &f32s(&out),
            );
            // One weight per row and modality [..., M].
            let w = random_f32(rows * m, 301);
            let wt = on(&device, "w", [lead.clone(), vec![m]].concat(), &w);
            let out = fusion::weighted_sum(&refs, &wt).unwrap();
            check_weighted_sum(
                &format!("{what}: per row"),
                &parts,
                &w,
                true,
                cols,
                &f32s(&out),
            );
        }
    }
}

#[test]
fn bad_operands_are_typed_errors() {
    let gpu = Device::gpu().unwrap();
    let a = on(&Device::Cpu, "a", vec![2, 3], &[1.0; 6]);
    let b = on(&Device::Cpu, "b", vec![3, 3], &[1.0; 9]);
    let err = fusion::concat(&[&a, &b]).unwrap_err();
    assert!(
        matches!(&err, Error::ShapeMismatch { right, .. } if right == "b"),
        "{err}"
    );
    let err = fusion::concat(&[]).unwrap_err();
    assert!(matches!(err, Error::OpArgument { .. }), "{err}");
    let scalar = Tensor::from_f32("s", vec![], &[1.0]).unwrap();
    let err = fusion::concat(&[&scalar]).unwrap_err();
    assert!(matches!(err, Error::OpRank { .. }), "{err}");
    let on_gpu = a.to_device(&gpu).unwrap();
    let err = fusion::concat(&[&a, &on_gpu]).unwrap_err();
    assert!(matches!(err, Error::DeviceMismatch { .. }), "{err}");

    let w2 = on(&Device::Cpu, "w", vec![2], &[0.5, 0.5]);
    let err = fusion::weighted_sum(&[&a, &b], &w2).unwrap_err();
    assert!(
        matches!(&err, Error::ShapeMismatch { right, .. } if right == "b"),
        "{err}"
    );
    let w3 = on(&Device::Cpu, "w", vec![3], &[0.5; 3]);
    let err = fusion::weighted_sum(&[&a, &a], &w3).unwrap_err();
    assert!(
        matches!(&err, Error::ShapeMismatch { right, .. } if right == "w"),
        "{err}"
    );
    let per_row_wrong = on(&Device::Cpu, "w", vec![3, 2], &[0.5; 6]);
    let err = fusion::weighted_sum(&[&a, &a], &per_row_wrong).unwrap_err();
    assert!(
        matches!(&err, Error::ShapeMismatch { right, .. } if right == "w"),
        "{err}"
    );
    let err = fusion::weighted_sum(&[], &w2).unwrap_err();
    assert!(matches!(err, Error::OpArgument { .. }), "{err}");
    let err = fusion::weighted_sum(&[&on_gpu, &on_gpu], &w2).unwrap_err();
    assert!(matches!(err, Error::DeviceMismatch { .. }), "{err}");
}
