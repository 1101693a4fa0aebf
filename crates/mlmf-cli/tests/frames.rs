//! `mlmf frames`, run as a user would, its outputs read back by the Python `safetensors` library
//! and checked against `fixtures/media/video`.

#[path = "../../../tests/common/mod.rs"]
mod common;
mod run;

use run::{mlmf, run};
use std::path::{Path, PathBuf};
use std::process::Command;

use mlmf::multimodal::preprocess::image::{decode_rgb, ImagePreprocess};
use sha2::{Digest, Sha256};

fn video(name: &str) -> PathBuf {
    common::fixtures().join("media/video").join(name)
}

fn frames_json(name: &str) -> serde_json::Value {
    let path = video(&format!("{name}.frames.json"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The Python `safetensors` library's view of `path`: per key its dtype, shape, the sha256 of
/// each slice along the first axis, and (for `pts`) the values; plus the metadata.
fn read_back(path: &Path) -> serde_json::Value {
    let script = r#"
import hashlib, json, sys
from safetensors import safe_open
out = {}
with safe_open(sys.argv[1], "numpy") as f:
    out["metadata"] = f.metadata()
    for k in f.keys():
        a = f.get_tensor(k)
        e = {"dtype": str(a.dtype), "shape": list(a.shape)}
        flat = a.reshape((-1,) + a.shape[len(a.shape) - (3 if k == "frames" else 0):]) if k == "frames" else a
        e["sha256"] = [hashlib.sha256(x.tobytes()).hexdigest() for x in flat]
        if k == "pts":
            e["values"] = a.reshape(-1).tolist()
        out[k] = e
print(json.dumps(out))
"#;
    let out = Command::new(common::python())
        .arg("-c")
        .arg(script)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "safetensors could not read {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn frames_refuses_bad_arguments_before_decoding() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.safetensors");
    let gif = video("newtonscradle.gif");
    let (gif, out) = (gif.to_str().unwrap(), out.to_str().unwrap());
    for args in [
        vec!["frames", gif, "--num", "0", "-o", out],
        vec!["frames", gif, "-o", out],
        vec!["frames", gif, "--num", "4", "--fps", "2", "-o", out],
        vec!["frames", gif, "--num", "4", "-o", "out.npy"],
        vec!["frames", gif, "--num", "-3", "-o", out],
        vec!["frames", gif, "--window", "4", "--num", "2", "-o", out],
    ] {
        let o = run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    assert!(!Path::new(out).exists());
    // A missing file: an error naming it.
    let missing = tmp.path().join("missing.gif");
    let o = run(&["frames", missing.to_str().unwrap(), "--num", "2", "-o", out]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("missing.gif"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn frames_raw_writes_the_fixture_frames_and_times() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("raw.safetensors");
    // MP4 needs FFmpeg (the `video` feature, on in CI).
    let mp4 = cfg!(feature = "video").then_some("realshort.mp4");
    for name in ["newtonscradle.gif", "clip.apng", "clip.webp"]
        .into_iter()
        .chain(mp4)
    {
        let j = frames_json(name);
        let listed = &j["uniform_sampling"]["T8"];
        let stdout = mlmf(&[
            "frames",
            video(name).to_str().unwrap(),
            "--num",
            "8",
            "--raw",
            "-o",
            out.to_str().unwrap(),
        ])
        .stdout;
        assert!(String::from_utf8_lossy(&stdout).contains("8 frames"));
        let back = read_back(&out);
        let (w, h) = (j["width"].as_u64().unwrap(), j["height"].as_u64().unwrap());
        assert_eq!(back["frames"]["dtype"], "uint8", "{name}");
        assert_eq!(back["frames"]["shape"], serde_json::json!([8, h, w, 3]));
        assert_eq!(back["frames"]["sha256"], listed["sha256"], "{name}");
        assert_eq!(back["pts"]["dtype"], "float64");
        assert_eq!(back["pts"]["shape"], serde_json::json!([8]));
        let pts: Vec<f64> = listed["indices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                j["frames"][i.as_u64().unwrap() as usize]["pts_s"]
                    .as_f64()
                    .unwrap()
            })
            .collect();
        assert_eq!(back["pts"]["values"], serde_json::json!(pts), "{name}");
        assert_eq!(
            back["metadata"]["indices"].as_str().unwrap(),
            listed["indices"].to_string(),
            "{name}"
        );
    }
}

#[test]
fn frames_preprocesses_with_imagenet_by_default_and_clip_on_request() {
    // T = 1 takes frame n / 2 = 18 of the GIF, which the fixture stores.
    let fixture = video("newtonscradle.gif.frames.safetensors");
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("frame18.bin");
    let dumped = Command::new(common::python())
        .arg("-c")
        .arg(
            "import sys\nfrom safetensors.numpy import load_file\n\
             open(sys.argv[2], 'wb').write(load_file(sys.argv[1])['frame_18'].tobytes())",
        )
        .arg(&fixture)
        .arg(&raw)
        .status()
        .unwrap();
    assert!(dumped.success());
    let img = image::RgbImage::from_raw(200, 150, std::fs::read(&raw).unwrap()).unwrap();
    let out = tmp.path().join("pre.safetensors");
    for (extra, pre, size) in [
        (vec![], ImagePreprocess::imagenet(), 224usize),
        (vec!["--preset", "clip"], ImagePreprocess::clip(), 224),
        (
            vec!["--size", "112"],
            ImagePreprocess {
                resize_shorter: 128,
                crop: 112,
                ..ImagePreprocess::imagenet()
            },
            112,
        ),
    ] {
        let gif = video("newtonscradle.gif");
        let mut args = vec!["frames", gif.to_str().unwrap(), "--num", "1"];
        args.extend(extra.iter().copied());
        args.extend(["-o", out.to_str().unwrap()]);
        mlmf(&args);
        let back = read_back(&out);
        assert_eq!(back["frames"]["dtype"], "float32");
        assert_eq!(
            back["frames"]["shape"],
            serde_json::json!([1, 3, size, size])
        );
        let want = pre.apply(&img).unwrap().to_bytes().unwrap();
        // One sha256 per [3, S, S] slot.
        let got: Vec<String> = back["frames"]["sha256"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(got, vec![sha256(&want)], "{extra:?}");
        assert_eq!(back["metadata"]["indices"], "[18]");
    }
}

#[test]
fn frames_writes_a_contact_sheet_png() {
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("sheet.png");
    let gif = video("newtonscradle.gif");
    mlmf(&[
        "frames",
        gif.to_str().unwrap(),
        "--num",
        "8",
        "-o",
        png.to_str().unwrap(),
    ]);
    let sheet = decode_rgb(&png).unwrap();
    // 8 frames of 200 x 150: 3 columns, 3 rows, 4-pixel gaps.
    assert_eq!(sheet.dimensions(), (3 * 200 + 4 * 4, 3 * 150 + 4 * 4));
    let j = frames_json("newtonscradle.gif");
    for (k, want) in j["uniform_sampling"]["T8"]["sha256"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let (r, c) = (k as u32 / 3, k as u32 % 3);
        let mut cell = Vec::new();
        for y in 0..150 {
            for x in 0..200 {
                cell.extend_from_slice(&sheet.get_pixel(4 + c * 204 + x, 4 + r * 154 + y).0);
            }
        }
        assert_eq!(sha256(&cell), want.as_str().unwrap(), "cell {k}");
    }
}

#[test]
fn frames_windows_and_rate() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("w.safetensors");
    let gif = video("newtonscradle.gif");
    let j = frames_json("newtonscradle.gif");
    let sha = |i: usize| j["frames"][i]["sha256"].clone();
    let args = |extra: &[&str]| {
        let mut a = vec!["frames", gif.to_str().unwrap(), "--raw"];
        a.extend_from_slice(extra);
        a.extend(["-o", out.to_str().unwrap()]);
        mlmf(&a);
        read_back(&out)
    };
    // 36 frames, windows of 16 every 8: starts 0, 8, 16, 24; the last padded with frame 35.
    let back = args(&["--window", "16", "--stride", "8"]);
    assert_eq!(
        back["frames"]["shape"],
        serde_json::json!([4, 16, 150, 200, 3])
    );
    assert_eq!(back["pts"]["shape"], serde_json::json!([4, 16]));
    let want: Vec<_> = (0..4)
        .flat_map(|w| (0..16).map(move |t| (w * 8 + t).min(35)))
        .map(sha)
        .collect();
    assert_eq!(back["frames"]["sha256"], serde_json::json!(want));
    // 10 fps: ffmpeg's fps=10:round=up picks frames 0, 3, 8, 12, 17, 21, 26, 30, 35.
    let back = args(&["--fps", "10"]);
    let want: Vec<_> = [0, 3, 8, 12, 17, 21, 26, 30, 35]
        .into_iter()
        .map(sha)
        .collect();
    assert_eq!(back["frames"]["sha256"], serde_json::json!(want));
}
