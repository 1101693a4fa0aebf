//! Video frame decoding against `fixtures/media/video`: every frame's sha256 over its RGB8 bytes
//! equals the reference decoder's (`<file>.frames.json`: Pillow 13 for GIF/APNG/WebP, the ffmpeg
//! command for MP4), the stored frames of `<file>.frames.safetensors` byte for byte, and the
//! times exactly. Then directories of numbered images, and broken inputs: typed errors naming
//! the file (and frame), never a panic.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

use mlmf::multimodal::video::{open_frame_dir, open_video, Frame, FrameSource, DEFAULT_DIR_FPS};
use mlmf::Error;
use safetensors::SafeTensors;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn dir() -> PathBuf {
    common::fixtures().join("media/video")
}

fn json(name: &str) -> Value {
    let text = std::fs::read_to_string(dir().join(format!("{name}.frames.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every frame of `source` until `None`, failing the test on an error.
fn all_frames(source: &mut dyn FrameSource) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Some(frame) = source.next_frame().unwrap() {
        assert_eq!(frame.index, frames.len());
        assert_eq!(
            frame.rgb.len(),
            frame.width as usize * frame.height as usize * 3
        );
        frames.push(frame);
    }
    // Exhausted sources stay exhausted.
    assert!(source.next_frame().unwrap().is_none());
    frames
}

/// Decodes `name` and checks frame count, size, every sha256 (the `sha_key` field) and the
/// stored frames; returns the frames and the fixture's json.
fn check_frames(name: &str, sha_key: &str) -> (Vec<Frame>, Value) {
    let want = json(name);
    let mut source = open_video(dir().join(name)).unwrap();
    let (w, h) = (
        want["width"].as_u64().unwrap(),
        want["height"].as_u64().unwrap(),
    );
    assert_eq!(
        (source.info().width as u64, source.info().height as u64),
        (w, h)
    );
    let frames = all_frames(source.as_mut());
    let expected = want["frames"].as_array().unwrap();
    assert_eq!(frames.len() as u64, want["frame_count"].as_u64().unwrap());
    assert_eq!(frames.len(), expected.len(), "{name}: frame count");
    for (frame, e) in frames.iter().zip(expected) {
        assert_eq!((frame.width as u64, frame.height as u64), (w, h));
        assert_eq!(
            hex(&frame.rgb),
            e[sha_key].as_str().unwrap(),
            "{name}: frame {}",
            frame.index
        );
    }
    let bytes = std::fs::read(dir().join(format!("{name}.frames.safetensors"))).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut stored = 0;
    for (key, view) in st.tensors() {
        let i: usize = key.strip_prefix("frame_").unwrap().parse().unwrap();
        assert_eq!(view.shape(), [h as usize, w as usize, 3]);
        if sha_key == "sha256" {
            assert!(frames[i].rgb == view.data(), "{name}: {key}");
        }
        stored += 1;
    }
    assert_eq!(stored, 3);
    (frames, want)
}

/// GIF/APNG/WebP: durations are whole milliseconds and pts their running sum.
fn check_ms_times(name: &str, frames: &[Frame], want: &Value) {
    let mut pts_ms = 0u64;
    for (frame, e) in frames.iter().zip(want["frames"].as_array().unwrap()) {
        // Compared in integer units: serde_json's default float parsing is not always correctly
        // rounded (0.09993333333333333 came back one ulp low), so the json's seconds are not.
        let ms = e["duration_ms"].as_u64().unwrap();
        assert_eq!(
            frame.duration_s,
            ms as f64 / 1000.0,
            "{name}: frame {}",
            frame.index
        );
        assert_eq!(
            frame.pts_s,
            pts_ms as f64 / 1000.0,
            "{name}: frame {}",
            frame.index
        );
        pts_ms += ms;
    }
}

#[test]
fn gif_frames_equal_pillow() {
    let (frames, want) = check_frames("newtonscradle.gif", "sha256");
    check_ms_times("newtonscradle.gif", &frames, &want);
}

#[test]
fn apng_frames_equal_pillow() {
    let name = "clip.apng";
    let source = open_video(dir().join(name)).unwrap();
    // acTL states the count.
    assert_eq!(source.info().frame_count, Some(12));
    let (frames, want) = check_frames(name, "sha256");
    check_ms_times(name, &frames, &want);
}

#[test]
fn webp_frames_equal_libwebp_compositing() {
    // Frames 1..10 are alpha-blended over the previous canvas: the bar the image crate's own
    // compositing misses by one level.
    let source = open_video(dir().join("clip.webp")).unwrap();
    // Counted from the ANMF chunk headers.
    assert_eq!(source.info().frame_count, Some(12));
    let (frames, want) = check_frames("clip.webp", "sha256");
    check_ms_times("clip.webp", &frames, &want);
}

#[test]
fn apng_and_webp_decode_to_the_same_crops() {
    // Both were written losslessly from the same 12 crops of realshort.mp4.
    let apng = all_frames(open_video(dir().join("clip.apng")).unwrap().as_mut());
    let webp = all_frames(open_video(dir().join("clip.webp")).unwrap().as_mut());
    assert_eq!(apng, webp);
}

#[cfg(feature = "video")]
#[test]
fn mp4_frames_equal_ffmpeg() {
    // The fixture's sha256 is libswscale's x86 SIMD path; other machines run its C code.
    let key = if cfg!(target_arch = "x86_64") {
        "sha256"
    } else {
        "sha256_swscale_c"
    };
    let (frames, want) = check_frames("realshort.mp4", key);
    let tb = want["time_base"].as_array().unwrap();
    let (num, den) = (tb[0].as_f64().unwrap(), tb[1].as_f64().unwrap());
    for (frame, e) in frames.iter().zip(want["frames"].as_array().unwrap()) {
        let (pts, dur) = (e["pts"].as_u64().unwrap(), e["duration"].as_u64().unwrap());
        let (pts, dur) = (pts as f64, dur as f64);
        // Exact ticks: the seconds are the ticks times the time base (the json's seconds are not
        // compared: serde_json's float parsing is not always correctly rounded).
        assert_eq!(frame.pts_s, pts * num / den, "frame {}", frame.index);
        assert_eq!(frame.duration_s, dur * num / den, "frame {}", frame.index);
    }
}

#[cfg(not(feature = "video"))]
#[test]
fn mp4_without_the_video_feature_says_how_to_get_it() {
    let path = dir().join("realshort.mp4");
    match open_video(&path) {
        Err(Error::UnsupportedVideo { path: p, reason }) => {
            assert_eq!(p, path);
            assert!(reason.contains("--features video"), "{reason}");
        }
        other => panic!("{:?}", other.map(|s| s.info().clone())),
    }
}

// ---- directories of numbered images ----

/// The three stored frames of the GIF fixture, as the fixture stores them.
fn stored_gif_frames() -> Vec<(u32, u32, Vec<u8>)> {
    let bytes = std::fs::read(dir().join("newtonscradle.gif.frames.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    ["frame_0", "frame_18", "frame_35"]
        .iter()
        .map(|k| {
            let v = st.tensor(k).unwrap();
            (v.shape()[1] as u32, v.shape()[0] as u32, v.data().to_vec())
        })
        .collect()
}

fn write_png(path: &Path, w: u32, h: u32, rgb: Vec<u8>) {
    image::RgbImage::from_raw(w, h, rgb)
        .unwrap()
        .save(path)
        .unwrap();
}

#[test]
fn directory_frames_in_numeric_order_at_25_fps() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = stored_gif_frames();
    // Lexical order would put frame_10 before frame_2.
    for (name, (w, h, rgb)) in ["frame_2.png", "frame_10.png", "frame_1.png"]
        .iter()
        .zip([&frames[1], &frames[2], &frames[0]])
    {
        write_png(&tmp.path().join(name), *w, *h, rgb.clone());
    }
    std::fs::write(tmp.path().join("notes.txt"), "not a frame").unwrap();
    let mut source = open_video(tmp.path()).unwrap();
    assert_eq!(source.info().frame_count, Some(3));
    assert_eq!((source.info().width, source.info().height), (200, 150));
    let got = all_frames(source.as_mut());
    assert_eq!(got.len(), 3);
    for (i, (frame, (_, _, rgb))) in got.iter().zip(&frames).enumerate() {
        assert!(&frame.rgb == rgb, "frame {i}");
        assert_eq!(frame.pts_s, i as f64 / 25.0);
        assert_eq!(frame.duration_s, 1.0 / 25.0);
    }
    assert_eq!(DEFAULT_DIR_FPS, 25.0);

    let got = all_frames(&mut open_frame_dir(tmp.path(), 10.0).unwrap());
    assert_eq!(got[2].pts_s, 0.2);
}

#[test]
fn directory_with_a_different_size_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    write_png(&tmp.path().join("f1.png"), 4, 3, vec![10; 36]);
    write_png(&tmp.path().join("f2.png"), 4, 3, vec![20; 36]);
    write_png(&tmp.path().join("f3.png"), 3, 4, vec![30; 36]);
    let mut source = open_video(tmp.path()).unwrap();
    assert!(source.next_frame().unwrap().is_some());
    assert!(source.next_frame().unwrap().is_some());
    match source.next_frame() {
        Err(Error::CorruptVideo {
            path,
            frame,
            reason,
        }) => {
            assert_eq!(path, tmp.path().join("f3.png"));
            assert_eq!(frame, Some(2));
            assert!(reason.contains("3x4"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn directory_without_images_is_empty() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("readme.txt"), "x").unwrap();
    // An image without a number is not a frame either.
    write_png(&tmp.path().join("cover.png"), 2, 2, vec![0; 12]);
    assert!(matches!(
        open_video(tmp.path()),
        Err(Error::EmptyVideo { path }) if path == tmp.path()
    ));
    assert!(matches!(
        open_frame_dir(tmp.path(), 0.0),
        Err(Error::UnsupportedVideo { .. })
    ));
}

#[test]
fn directory_with_a_broken_image_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    write_png(&tmp.path().join("f1.png"), 4, 3, vec![10; 36]);
    let mut png = std::fs::read(tmp.path().join("f1.png")).unwrap();
    png.truncate(png.len() / 2);
    std::fs::write(tmp.path().join("f2.png"), png).unwrap();
    let mut source = open_video(tmp.path()).unwrap();
    assert!(source.next_frame().unwrap().is_some());
    match source.next_frame() {
        Err(Error::CorruptVideo { path, frame, .. }) => {
            assert_eq!(path, tmp.path().join("f2.png"));
            assert_eq!(frame, Some(1));
        }
        other => panic!("{other:?}"),
    }
}

// ---- bad input ----

/// Decodes `path` to the end: the error it ends in (opening or a frame), or the frame count.
fn decode_to_end(path: &Path) -> Result<usize, Error> {
    let mut source = open_video(path)?;
    let mut n = 0;
    while source.next_frame()?.is_some() {
        n += 1;
    }
    Ok(n)
}

/// The error variant names the file.
fn assert_names(e: &Error, path: &Path) {
    let p = match e {
        Error::CorruptVideo { path, .. }
        | Error::UnsupportedVideo { path, .. }
        | Error::EmptyVideo { path } => path,
        other => panic!("{}: unexpected error {other:?}", path.display()),
    };
    assert_eq!(p, path);
    assert!(e.to_string().contains(&path.display().to_string()));
}

/// Copies of `name` cut in its header, its first chunks and its frame data (not in a trailer
/// after the last frame: a PNG missing part of IEND, or an MP4 part of its moov metadata, loses
/// no frame and decodes whole).
fn cut_copies(name: &str, tmp: &Path, near_end: bool) -> Vec<(usize, PathBuf)> {
    let bytes = std::fs::read(dir().join(name)).unwrap();
    let n = bytes.len();
    let mut cuts = vec![1, 6, 13, 40, 200, n / 3, n / 2];
    if near_end {
        cuts.push(n - 100);
    }
    cuts.into_iter()
        .map(|len| {
            let path = tmp.join(format!("cut{len}_{name}"));
            std::fs::write(&path, &bytes[..len]).unwrap();
            (len, path)
        })
        .collect()
}

#[test]
fn truncated_animations_are_typed_errors() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["newtonscradle.gif", "clip.apng", "clip.webp"] {
        for (len, path) in cut_copies(name, tmp.path(), true) {
            let e = decode_to_end(&path).expect_err(&format!(
                "{name} cut to {len} bytes decoded without an error"
            ));
            assert_names(&e, &path);
            println!("{name} cut to {len}: {e}");
        }
    }
}

#[cfg(feature = "video")]
#[test]
fn truncated_mp4_is_a_typed_error() {
    let tmp = tempfile::tempdir().unwrap();
    // Its moov box is at the end: every cut loses it.
    for (len, path) in cut_copies("realshort.mp4", tmp.path(), false) {
        let e = decode_to_end(&path).expect_err(&format!(
            "realshort.mp4 cut to {len} bytes decoded without an error"
        ));
        assert_names(&e, &path);
        println!("realshort.mp4 cut to {len}: {e}");
    }
}

#[test]
fn garbage_and_empty_files() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty.gif");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(open_video(&empty), Err(Error::EmptyVideo { path }) if path == empty));

    let garbage = tmp.path().join("garbage.mp4");
    let bytes: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&garbage, bytes).unwrap();
    let e = decode_to_end(&garbage).unwrap_err();
    assert_names(&e, &garbage);
    assert!(matches!(e, Error::UnsupportedVideo { .. }), "{e}");

    // Right magic, garbage after it.
    for (name, magic) in [
        ("g.gif", &b"GIF89a"[..]),
        ("p.png", &b"\x89PNG\r\n\x1a\n"[..]),
        ("w.webp", &b"RIFF\xff\x00\x00\x00WEBP"[..]),
    ] {
        let path = tmp.path().join(name);
        let mut bytes = magic.to_vec();
        bytes.extend((0..300u32).map(|i| (i * 31 % 256) as u8));
        std::fs::write(&path, bytes).unwrap();
        let e = decode_to_end(&path).unwrap_err();
        assert_names(&e, &path);
    }

    let missing = tmp.path().join("missing.gif");
    assert!(matches!(open_video(&missing), Err(Error::Io { .. })));
}

/// A PNG chunk with its CRC (IEEE CRC-32, bitwise).
fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut crc = 0xffff_ffffu32;
    for &b in kind.iter().chain(data) {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&(!crc).to_be_bytes());
    out
}

fn ihdr(w: u32, h: u32) -> Vec<u8> {
    let mut d = w.to_be_bytes().to_vec();
    d.extend_from_slice(&h.to_be_bytes());
    d.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    png_chunk(b"IHDR", &d)
}

#[test]
fn absurd_dimensions_and_counts_are_refused_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: Vec<u8>| {
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };

    // GIF logical screen of 65535 x 65535 (17 GB as RGBA).
    let mut gif = b"GIF89a".to_vec();
    gif.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00]);
    gif.extend_from_slice(&[0x2c, 0, 0, 0, 0, 1, 0, 1, 0, 0, 2, 2, 0x4c, 0x01, 0, 0x3b]);
    let path = write("huge.gif", gif);
    let e = decode_to_end(&path).unwrap_err();
    assert_names(&e, &path);
    assert!(matches!(e, Error::UnsupportedVideo { .. }), "{e}");

    // PNG IHDR of 65535 x 65535.
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(ihdr(65535, 65535));
    png.extend(png_chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    png.extend(png_chunk(b"IEND", &[]));
    let path = write("huge.png", png);
    let e = decode_to_end(&path).unwrap_err();
    assert_names(&e, &path);
    assert!(matches!(e, Error::UnsupportedVideo { .. }), "{e}");

    // APNG whose acTL claims 2^32 - 1 frames in a few hundred bytes.
    let mut apng = b"\x89PNG\r\n\x1a\n".to_vec();
    apng.extend(ihdr(1, 1));
    apng.extend(png_chunk(b"acTL", &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]));
    apng.extend(png_chunk(b"IEND", &[]));
    let path = write("many.png", apng);
    match decode_to_end(&path).unwrap_err() {
        Error::CorruptVideo {
            path: p, reason, ..
        } => {
            assert_eq!(p, path);
            assert!(reason.contains("4294967295"), "{reason}");
        }
        other => panic!("{other:?}"),
    }

    // Animated WebP with a VP8X canvas of 16777216 x 16777216.
    let mut webp = b"RIFF\x00\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00".to_vec();
    webp.extend_from_slice(&[0x02, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    let len = (webp.len() - 8) as u32;
    webp[4..8].copy_from_slice(&len.to_le_bytes());
    let path = write("huge.webp", webp);
    let e = decode_to_end(&path).unwrap_err();
    assert_names(&e, &path);
    assert!(matches!(e, Error::UnsupportedVideo { .. }), "{e}");
}

#[test]
fn containers_without_frames_are_empty() {
    let tmp = tempfile::tempdir().unwrap();
    // A GIF with a screen and no image (header, screen descriptor, trailer): the gif crate
    // refuses it when reading the header.
    let gif_path = tmp.path().join("noframes.gif");
    let mut gif = b"GIF89a".to_vec();
    gif.extend_from_slice(&[4, 0, 4, 0, 0x00, 0x00, 0x00, 0x3b]);
    std::fs::write(&gif_path, gif).unwrap();
    let e = decode_to_end(&gif_path).unwrap_err();
    assert!(
        matches!(e, Error::CorruptVideo { ref path, .. } if *path == gif_path),
        "{e}"
    );

    // An animated WebP (VP8X + ANIM) without a single ANMF chunk.
    let webp_path = tmp.path().join("noframes.webp");
    let mut webp = b"RIFF\x00\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00".to_vec();
    webp.extend_from_slice(&[0x02, 0, 0, 0, 3, 0, 0, 3, 0, 0]);
    webp.extend_from_slice(b"ANIM\x06\x00\x00\x00\x00\x00\x00\x00\x00\x00");
    let len = (webp.len() - 8) as u32;
    webp[4..8].copy_from_slice(&len.to_le_bytes());
    std::fs::write(&webp_path, webp).unwrap();
    let e = decode_to_end(&webp_path).unwrap_err();
    assert!(
        matches!(e, Error::EmptyVideo { ref path } if *path == webp_path),
        "{e}"
    );
}

#[cfg(feature = "video")]
#[test]
fn mp4_without_frame_data_is_a_typed_error() {
    // realshort.mp4 is ftyp, mdat, moov: the same moov after an mdat of zeros points at samples
    // that hold no H.264 data.
    let bytes = std::fs::read(dir().join("realshort.mp4")).unwrap();
    let mut zeroed = bytes.clone();
    zeroed[32..95300].fill(0);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("zeroed.mp4");
    std::fs::write(&path, zeroed).unwrap();
    let e = decode_to_end(&path).unwrap_err();
    assert_names(&e, &path);
    println!("{e}");
}

/// Each file of `tests/data/video/<json>` (made and decoded with Pillow 13, see the README
/// there) against Pillow's frames: sha256 of every frame (all mismatches listed) and exact times.
fn check_pillow_set(json_name: &str, files: &[&str]) {
    let data = common::workspace_dir().join("crates/mlmf/tests/data/video");
    let text = std::fs::read_to_string(data.join(json_name)).unwrap();
    let want: Value = serde_json::from_str(&text).unwrap();
    let mut bad = Vec::new();
    for name in files {
        let frames = all_frames(open_video(data.join(name)).unwrap().as_mut());
        let expected = want[name]["frames"].as_array().unwrap();
        assert_eq!(frames.len(), expected.len(), "{name}");
        for (f, e) in frames.iter().zip(expected) {
            if hex(&f.rgb) != e["sha256"].as_str().unwrap() {
                bad.push(format!("{name} frame {}", f.index));
            }
            // Whole milliseconds (APNG's come as floats from Pillow).
            let (pts, dur) = (
                e["pts_ms"].as_f64().unwrap(),
                e["duration_ms"].as_f64().unwrap(),
            );
            assert_eq!(f.pts_s, pts / 1000.0, "{name} frame {}", f.index);
            assert_eq!(f.duration_s, dur / 1000.0, "{name} frame {}", f.index);
        }
    }
    assert!(bad.is_empty(), "{bad:?}");
}

/// Transparency, partial rectangles and disposal 2/3 (which `newtonscradle.gif` does not use).
#[test]
fn gif_disposal_and_transparency_equal_pillow() {
    check_pillow_set(
        "gifs.json",
        &[
            "disposal2_transparent.gif",
            "disposal3_transparent.gif",
            "disposal_mixed.gif",
        ],
    );
}

/// Blend OVER with partial alpha and dispose NONE/BACKGROUND/PREVIOUS, and PREVIOUS with SOURCE
/// (`clip.apng` uses blend SOURCE and dispose NONE only).
#[test]
fn apng_blend_and_dispose_equal_pillow() {
    check_pillow_set(
        "apngs.json",
        &[
            "blend_over.apng",
            "dispose_background.apng",
            "dispose_previous.apng",
            "dispose_previous_source.apng",
        ],
    );
}
