//! `KvCache`: rows appended in place on the device (across page boundaries on a GPU of 4 KiB
//! pages) read back through its views exactly as written, on lavapipe and on the CPU; what it
//! refuses is a typed error that leaves the cache as it was.

#[path = "../../../tests/common/mod.rs"]
mod common;

use mlmf_core::{DType, Error, Shape};
use mlmf_gpu::{Device, GpuOptions, KvCache, Tensor};

const WIDTH: usize = 24;

fn gpu() -> Device {
    Device::gpu().expect("a GPU adapter (lavapipe: apt-get install mesa-vulkan-drivers)")
}

/// Pages of 4 KiB: the cache's 96-byte rows fill 42 to a page, so appends straddle pages.
fn tiny_gpu() -> Device {
    Device::gpu_with(&GpuOptions {
        max_page_bytes: Some(4096),
        staging_bytes: 16384,
        ..Default::default()
    })
    .expect("a GPU adapter")
}

fn rows(device: &Device, n: usize, seed: u64) -> (Tensor, Vec<f32>) {
    let v = common::random_f32(n * WIDTH, seed);
    let t = Tensor::from_f32("rows", vec![1, n, WIDTH], &v)
        .unwrap()
        .to_device(device)
        .unwrap();
    (t, v)
}

#[test]
fn appended_rows_read_back_exactly() {
    for device in [gpu(), tiny_gpu(), Device::Cpu] {
        let mut cache = KvCache::new(&device, "test", 2, 100, WIDTH).unwrap();
        assert!(cache.is_empty());
        let mut want: [(Vec<f32>, Vec<f32>); 2] = Default::default();
        for (i, n) in [1, 5, 37, 1, 20, 36].into_iter().enumerate() {
            for (layer, want) in want.iter_mut().enumerate() {
                let seed = (i * 4 + layer * 2) as u64;
                let (k, kv) = rows(&device, n, seed);
                let (v, vv) = rows(&device, n, seed + 1);
                let (keys, values) = cache.append(layer, &k, &v).unwrap();
                want.0.extend(kv);
                want.1.extend(vv);
                let len = want.0.len() / WIDTH;
                assert_eq!(cache.len(layer), len);
                assert_eq!(keys.shape().dims(), &[1, len, WIDTH]);
                assert_eq!(keys.to_f32_vec().unwrap(), want.0, "{device:?}");
                assert_eq!(values.to_f32_vec().unwrap(), want.1, "{device:?}");
            }
        }
        assert_eq!(cache.len(0), 100);

        // Full: one more row is refused, and the cache is unchanged.
        let (k, _) = rows(&device, 1, 99);
        let err = cache.append(0, &k, &k).err().unwrap();
        assert!(
            matches!(
                err,
                Error::OpIndex {
                    index: 100,
                    len: 100,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(cache.len(0), 100);

        // Cleared, the next rows start again at position 0.
        cache.clear();
        assert!(cache.is_empty());
        let (k, kv) = rows(&device, 3, 7);
        let (keys, _) = cache.append(1, &k, &k).unwrap();
        assert_eq!(keys.to_f32_vec().unwrap(), kv);
        assert_eq!((cache.len(0), cache.len(1)), (0, 3));
    }
}

#[test]
fn what_the_cache_refuses_is_a_typed_error() {
    let device = gpu();
    let mut cache = KvCache::new(&device, "test", 1, 8, WIDTH).unwrap();
    let (k, _) = rows(&device, 2, 1);
    let (three, _) = rows(&device, 3, 2);

    let err = cache.append(1, &k, &k).err().unwrap();
    assert!(matches!(err, Error::OpIndex { what: "layer", .. }), "{err}");
    let err = cache.append(0, &k, &three).err().unwrap();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let narrow = Tensor::from_f32("narrow", vec![2, WIDTH - 1], &[0.0; 2 * (WIDTH - 1)])
        .unwrap()
        .to_device(&device)
        .unwrap();
    let err = cache.append(0, &narrow, &narrow).err().unwrap();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let half = Tensor::from_bytes(
        "half",
        DType::F16,
        Shape::new(vec![2, WIDTH]).unwrap(),
        vec![0; 2 * WIDTH * 2],
    )
    .unwrap()
    .to_device(&device)
    .unwrap();
    let err = cache.append(0, &half, &half).err().unwrap();
    assert!(matches!(err, Error::OpDType { .. }), "{err}");
    // Rows on the CPU or on another GPU device.
    let (host, _) = rows(&Device::Cpu, 2, 3);
    let err = cache.append(0, &host, &host).err().unwrap();
    assert!(matches!(err, Error::DeviceMismatch { .. }), "{err}");
    let (other, _) = rows(&gpu(), 2, 4);
    let err = cache.append(0, &other, &other).err().unwrap();
    assert!(matches!(err, Error::DeviceMismatch { .. }), "{err}");
    let mut host_cache = KvCache::new(&Device::Cpu, "host", 1, 8, WIDTH).unwrap();
    let err = host_cache.append(0, &k, &k).err().unwrap();
    assert!(matches!(err, Error::DeviceMismatch { .. }), "{err}");
    // Nothing was written by any of them.
    assert!(cache.is_empty() && host_cache.is_empty());
    // A cache whose size overflows.
    let err = KvCache::new(&device, "huge", 1, usize::MAX, 2)
        .err()
        .unwrap();
    assert!(matches!(err, Error::DeviceLimit { .. }), "{err}");
}
