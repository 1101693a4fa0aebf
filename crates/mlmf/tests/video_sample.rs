//! Frame sampling against `fixtures/media/video`: uniform indices as the fixture lists them,
//! fixed-rate sampling as ffmpeg's `fps=F:round=up` filter picks frames, temporal windows, the
//! image pipeline per frame, the contact sheet, and bad input.
//!
//! Most tests drive the sampler with a test-only `FrameSource` that replays a fixture clip's
//! timing (`<file>.frames.json`) with the real pixels where `<file>.frames.safetensors` holds
//! them. The tests at the end open the real files through `open_video` and need the decoders
//! (branch i13-video).

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;

use image::RgbImage;
use mlmf::multimodal::preprocess::image::{resize, Filter, ImagePreprocess};
use mlmf::multimodal::video::sample::{
    sample_frames, sample_preprocessed, SampledFrames, Sampling, MAX_SAMPLED_BYTES,
};
use mlmf::multimodal::video::{
    contact_sheet, write_png, Frame, FrameSource, SheetOptions, VideoInfo,
};
use mlmf::Error;
use sha2::{Digest, Sha256};

const CLIPS: [&str; 4] = [
    "realshort.mp4",
    "newtonscradle.gif",
    "clip.apng",
    "clip.webp",
];

fn video_dir() -> PathBuf {
    common::fixtures().join("media/video")
}

fn frames_json(clip: &str) -> serde_json::Value {
    let path = video_dir().join(format!("{clip}.frames.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// The U8 `[H, W, 3]` frames of `<clip>.frames.safetensors`, by frame index.
fn fixture_frames(clip: &str) -> BTreeMap<usize, Vec<u8>> {
    let bytes = std::fs::read(video_dir().join(format!("{clip}.frames.safetensors"))).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::U8);
            let index = name.strip_prefix("frame_").unwrap().parse().unwrap();
            (index, view.data().to_vec())
        })
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A clip replayed from its fixture timing: frame `i` has the real pixels where the fixture
/// stores them, else every byte `i`. Counts opens and frames read.
struct Replay {
    info: VideoInfo,
    times: Vec<(f64, f64)>,
    pixels: Rc<BTreeMap<usize, Vec<u8>>>,
    next: usize,
    read: Rc<Cell<usize>>,
}

#[derive(Clone)]
struct Clip {
    path: PathBuf,
    width: u32,
    height: u32,
    times: Vec<(f64, f64)>,
    pixels: Rc<BTreeMap<usize, Vec<u8>>>,
    /// Whether the source states its frame count.
    known: bool,
    opens: Rc<Cell<usize>>,
    read: Rc<Cell<usize>>,
}

impl Clip {
    fn fixture(clip: &str, known: bool) -> Clip {
        let j = frames_json(clip);
        let times = j["frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["pts_s"].as_f64().unwrap(),
                    f["duration_s"].as_f64().unwrap(),
                )
            })
            .collect();
        Clip {
            path: video_dir().join(clip),
            width: j["width"].as_u64().unwrap() as u32,
            height: j["height"].as_u64().unwrap() as u32,
            times,
            pixels: Rc::new(fixture_frames(clip)),
            known,
            opens: Rc::default(),
            read: Rc::default(),
        }
    }

    /// Only the frames the fixture stores, as a clip of their own, 0.1 s apart.
    fn stored(clip: &str) -> Clip {
        let mut c = Clip::fixture(clip, true);
        let frames: BTreeMap<usize, Vec<u8>> = c.pixels.values().cloned().enumerate().collect();
        c.times = (0..frames.len()).map(|i| (i as f64 / 10.0, 0.1)).collect();
        c.pixels = Rc::new(frames);
        c
    }

    fn open(&self) -> Box<dyn FrameSource> {
        self.opens.set(self.opens.get() + 1);
        Box::new(Replay {
            info: VideoInfo {
                path: self.path.clone(),
                width: self.width,
                height: self.height,
                frame_count: self.known.then_some(self.times.len()),
            },
            times: self.times.clone(),
            pixels: self.pixels.clone(),
            next: 0,
            read: self.read.clone(),
        })
    }

    fn opener(&self) -> impl FnMut() -> mlmf::Result<Box<dyn FrameSource>> + '_ {
        move || Ok(self.open())
    }

    fn frame(&self, i: usize) -> Vec<u8> {
        match self.pixels.get(&i) {
            Some(p) => p.clone(),
            None => vec![i as u8; self.width as usize * self.height as usize * 3],
        }
    }
}

impl FrameSource for Replay {
    fn info(&self) -> &VideoInfo {
        &self.info
    }

    fn next_frame(&mut self) -> mlmf::Result<Option<Frame>> {
        let Some(&(pts_s, duration_s)) = self.times.get(self.next) else {
            return Ok(None);
        };
        let i = self.next;
        self.next += 1;
        self.read.set(self.read.get() + 1);
        let rgb = match self.pixels.get(&i) {
            Some(p) => p.clone(),
            None => vec![i as u8; self.info.width as usize * self.info.height as usize * 3],
        };
        Ok(Some(Frame {
            index: i,
            width: self.info.width,
            height: self.info.height,
            rgb,
            pts_s,
            duration_s,
        }))
    }
}

fn raw(clip: &Clip, sampling: Sampling) -> SampledFrames {
    sample_frames(&mut clip.opener(), sampling).unwrap()
}

/// Every slot of `s` holds the pixels of the frame its index names.
fn assert_slots_hold_their_frames(clip: &Clip, s: &SampledFrames) {
    let b = clip.width as usize * clip.height as usize * 3;
    assert_eq!(s.rgb.len(), s.samples.indices.len() * b);
    for (slot, &i) in s.samples.indices.iter().enumerate() {
        assert!(
            s.rgb[slot * b..(slot + 1) * b] == clip.frame(i)[..],
            "slot {slot} does not hold frame {i}"
        );
        assert_eq!(s.samples.pts_s[slot], clip.times[i].0, "slot {slot} pts");
    }
}

#[test]
fn uniform_sampling_selects_the_fixture_indices() {
    for name in CLIPS {
        let j = frames_json(name);
        for t in [8usize, 16] {
            let expected: Vec<usize> = j["uniform_sampling"][format!("T{t}")]["indices"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            for known in [true, false] {
                let clip = Clip::fixture(name, known);
                let s = raw(&clip, Sampling::Uniform { num: t });
                assert_eq!(s.samples.lead, vec![t], "{name} T {t}");
                assert_eq!(s.samples.indices, expected, "{name} T {t} known {known}");
                assert_slots_hold_their_frames(&clip, &s);
                // A stated count needs one pass, which stops after the last selected frame;
                // otherwise a counting pass over every frame, then a second from the start.
                let n = clip.times.len();
                let last = *expected.last().unwrap();
                if known {
                    assert_eq!((clip.opens.get(), clip.read.get()), (1, last + 1), "{name}");
                } else {
                    assert_eq!(
                        (clip.opens.get(), clip.read.get()),
                        (2, n + last + 1),
                        "{name}"
                    );
                }
            }
        }
    }
}

#[test]
fn uniform_sampling_repeats_frames_of_a_short_clip() {
    // clip.apng has 12 frames; T = 16 repeats some (the fixture lists them), T = 40 more.
    let clip = Clip::fixture("clip.apng", false);
    let s = raw(&clip, Sampling::Uniform { num: 40 });
    let expected: Vec<usize> = (0..40).map(|i| (2 * i + 1) * 12 / 80).collect();
    assert_eq!(s.samples.indices, expected);
    assert_slots_hold_their_frames(&clip, &s);
}

/// ffmpeg 5.1's choices, as the frame indices of
/// `ffmpeg -i FILE -an -vf fps=F:round=up -f framemd5 -` matched (in order) to those of
/// `ffmpeg -i FILE -an -fps_mode passthrough -f framemd5 -`. The same commands with the default
/// `round=near` give other frames, and fewer for the GIF at 10 fps (8).
const FFMPEG_FPS_ROUND_UP: &[(&str, f64, &[usize])] = &[
    (
        "newtonscradle.gif",
        10.0,
        &[0, 3, 8, 12, 17, 21, 26, 30, 35],
    ),
    (
        "newtonscradle.gif",
        25.0,
        &[
            0, 0, 2, 4, 6, 8, 9, 11, 13, 15, 17, 18, 20, 22, 24, 26, 27, 29, 31, 33, 35,
        ],
    ),
    ("newtonscradle.gif", 3.0, &[0, 14, 28]),
    ("newtonscradle.gif", 7.0, &[0, 5, 11, 18, 24, 30]),
    ("realshort.mp4", 7.0, &[0, 4, 8, 12, 17, 21, 25, 30, 34]),
    (
        "realshort.mp4",
        12.0,
        &[0, 2, 5, 7, 10, 12, 15, 17, 20, 22, 25, 27, 30, 32, 35],
    ),
    ("realshort.mp4", 1.0, &[0, 30]),
    ("clip.apng", 10.0, &[0, 3, 6, 9]),
];

#[test]
fn rate_sampling_picks_the_frames_ffmpeg_fps_round_up_picks() {
    for &(name, fps, expected) in FFMPEG_FPS_ROUND_UP {
        let clip = Clip::fixture(name, false);
        let s = raw(&clip, Sampling::Rate { fps });
        assert_eq!(s.samples.indices, expected, "{name} at {fps} fps");
        assert_eq!(s.samples.lead, vec![expected.len()]);
        assert_slots_hold_their_frames(&clip, &s);
        assert_eq!(clip.opens.get(), 1, "one pass");
    }
    // realshort.mp4 at 30 fps (its own rate is 90000 / 2998): every frame once, as ffmpeg.
    let clip = Clip::fixture("realshort.mp4", false);
    let s = raw(&clip, Sampling::Rate { fps: 30.0 });
    assert_eq!(s.samples.indices, (0..36).collect::<Vec<_>>());
}

#[test]
fn windows_over_a_fixture_clip_pad_the_last_with_the_last_frame() {
    let clip = Clip::fixture("newtonscradle.gif", false);
    let s = raw(&clip, Sampling::Windows { len: 16, stride: 8 });
    // 36 frames: windows at 0, 8, 16, 24 (24 + 16 passes the end: 24..35, then 35 repeated).
    assert_eq!(s.samples.lead, vec![4, 16]);
    let mut expected = Vec::new();
    for w in 0..4 {
        expected.extend((0..16).map(|t| (w * 8 + t).min(35)));
    }
    assert_eq!(s.samples.indices, expected);
    assert_slots_hold_their_frames(&clip, &s);
    assert_eq!(clip.opens.get(), 1, "one pass");
}

fn f32s(t: &mlmf::Tensor) -> Vec<f32> {
    common::f32s(&t.to_bytes().unwrap())
}

#[test]
fn preprocessed_samples_are_the_image_pipeline_of_each_frame() {
    for (name, pre) in [
        ("realshort.mp4", ImagePreprocess::imagenet()),
        ("newtonscradle.gif", ImagePreprocess::clip()),
        ("clip.apng", ImagePreprocess::imagenet()),
    ] {
        // The three stored frames (first, middle, last) as a clip of three.
        let clip = Clip::stored(name);
        let per_frame: Vec<Vec<f32>> = (0..3)
            .map(|i| {
                let img = RgbImage::from_raw(clip.width, clip.height, clip.frame(i)).unwrap();
                f32s(&pre.apply(&img).unwrap())
            })
            .collect();
        let c = pre.crop as usize;
        let slot = 3 * c * c;
        for (sampling, lead, indices) in [
            (Sampling::Uniform { num: 4 }, vec![4], vec![0, 1, 1, 2]),
            (
                Sampling::Windows { len: 2, stride: 2 },
                vec![2, 2],
                vec![0, 1, 2, 2],
            ),
        ] {
            let s = sample_preprocessed(&mut clip.opener(), sampling, &pre).unwrap();
            let mut dims = lead.clone();
            dims.extend([3, c, c]);
            assert_eq!(s.tensor.shape().dims(), &dims[..], "{name}");
            assert_eq!(s.tensor.dtype(), mlmf::DType::F32);
            assert_eq!(s.samples.indices, indices, "{name}");
            let values = f32s(&s.tensor);
            for (k, &i) in indices.iter().enumerate() {
                assert!(
                    values[k * slot..(k + 1) * slot] == per_frame[i][..],
                    "{name} {sampling:?}: slot {k} is not frame {i} preprocessed"
                );
            }
        }
    }
}

#[test]
fn contact_sheet_lays_the_frames_out_in_order() {
    let clip = Clip::stored("newtonscradle.gif"); // three 200 x 150 frames
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("sheet.png");
    let options = SheetOptions::default();
    let sheet = contact_sheet(&mut clip.opener(), Sampling::Uniform { num: 5 }, &options).unwrap();
    write_png(&png, &sheet).unwrap();
    // Decoded back by the image crate's PNG decoder.
    let back = image::open(&png).unwrap().to_rgb8();
    // 5 frames: 3 columns (ceil(sqrt(5))), 2 rows, 4-pixel gaps.
    assert_eq!(back.dimensions(), (3 * 200 + 4 * 4, 2 * 150 + 3 * 4));
    let order = [0, 1, 1, 2, 2]; // uniform_index over 3 frames for T = 5
    let cell = |r: u32, c: u32| {
        let mut v = Vec::new();
        for y in 0..150 {
            for x in 0..200 {
                v.extend_from_slice(&back.get_pixel(4 + c * 204 + x, 4 + r * 154 + y).0);
            }
        }
        v
    };
    for (k, &i) in order.iter().enumerate() {
        let (r, c) = (k as u32 / 3, k as u32 % 3);
        assert!(cell(r, c) == clip.frame(i), "cell {k} is not frame {i}");
    }
    // The sixth cell and the gaps are background.
    assert!(cell(1, 2).iter().all(|&b| b == 0));
    assert!((0..back.width()).all(|x| back.get_pixel(x, 2).0 == [0, 0, 0]));

    // Scaled cells: the longer side to 100, each frame through Pillow's bilinear resize.
    let options = SheetOptions {
        max_side: 100,
        columns: Some(2),
        gap: 0,
        background: [255, 0, 255],
    };
    let sheet = contact_sheet(&mut clip.opener(), Sampling::Uniform { num: 3 }, &options).unwrap();
    assert_eq!(sheet.dimensions(), (200, 150));
    for i in 0..3u32 {
        let img = RgbImage::from_raw(200, 150, clip.frame(i as usize)).unwrap();
        let small = resize(&img, 100, 75, Filter::Bilinear).unwrap();
        let (x0, y0) = ((i % 2) * 100, (i / 2) * 75);
        for (x, y, p) in small.enumerate_pixels() {
            assert_eq!(sheet.get_pixel(x0 + x, y0 + y), p, "frame {i} at {x}, {y}");
        }
    }
    assert_eq!(sheet.get_pixel(150, 100).0, [255, 0, 255]);

    // Windows: one row per window. Windows of 2 every 2 over 3 frames: [0, 1], [2, 2].
    let options = SheetOptions {
        gap: 0,
        ..SheetOptions::default()
    };
    let windows = Sampling::Windows { len: 2, stride: 2 };
    let sheet = contact_sheet(&mut clip.opener(), windows, &options).unwrap();
    assert_eq!(sheet.dimensions(), (400, 300));
    for (k, i) in [0usize, 1, 2, 2].into_iter().enumerate() {
        let (x0, y0) = ((k as u32 % 2) * 200, (k as u32 / 2) * 150);
        let cell: Vec<u8> = (0..150)
            .flat_map(|y| (0..200).map(move |x| (x, y)))
            .flat_map(|(x, y)| sheet.get_pixel(x0 + x, y0 + y).0)
            .collect();
        assert!(cell == clip.frame(i), "window cell {k} is not frame {i}");
    }
}

/// A source that misbehaves in one way.
struct Broken {
    info: VideoInfo,
    frames: Vec<Frame>,
}

impl FrameSource for Broken {
    fn info(&self) -> &VideoInfo {
        &self.info
    }

    fn next_frame(&mut self) -> mlmf::Result<Option<Frame>> {
        Ok((!self.frames.is_empty()).then(|| self.frames.remove(0)))
    }
}

fn frame(index: usize, width: u32, height: u32, pts_s: f64) -> Frame {
    Frame {
        index,
        width,
        height,
        rgb: vec![7; width as usize * height as usize * 3],
        pts_s,
        duration_s: 0.04,
    }
}

fn broken(frame_count: Option<usize>, frames: Vec<Frame>, s: Sampling) -> Option<Error> {
    let info = VideoInfo {
        path: "broken.video".into(),
        width: 8,
        height: 8,
        frame_count,
    };
    let mut open = || -> mlmf::Result<Box<dyn FrameSource>> {
        Ok(Box::new(Broken {
            info: info.clone(),
            frames: frames.clone(),
        }))
    };
    sample_frames(&mut open, s).err()
}

#[test]
fn bad_sampling_input_is_a_typed_error() {
    let clip = Clip::fixture("newtonscradle.gif", true);
    let pre = ImagePreprocess::imagenet();
    for s in [
        Sampling::Uniform { num: 0 },
        Sampling::Windows { len: 0, stride: 4 },
        Sampling::Windows { len: 4, stride: 0 },
        Sampling::Rate { fps: 0.0 },
        Sampling::Rate { fps: f64::NAN },
    ] {
        let e = sample_frames(&mut clip.opener(), s).err();
        assert!(matches!(e, Some(Error::BadSampling { .. })), "{s:?}: {e:?}");
    }
    // An absurd T with a preprocessed output: refused before a frame is decoded.
    let read = clip.read.get();
    for num in [
        usize::MAX,
        (MAX_SAMPLED_BYTES / (3 * 224 * 224 * 4)) as usize + 1,
    ] {
        let e = sample_preprocessed(&mut clip.opener(), Sampling::Uniform { num }, &pre).err();
        assert!(
            matches!(e, Some(Error::BadSampling { .. })),
            "T {num}: {e:?}"
        );
    }
    assert_eq!(clip.read.get(), read, "no frame decoded");
    // Raw frames: the first frame tells the size; refused before anything sized by T.
    let e = sample_frames(&mut clip.opener(), Sampling::Uniform { num: usize::MAX }).err();
    assert!(matches!(e, Some(Error::BadSampling { .. })), "{e:?}");
    let e = sample_frames(&mut clip.opener(), Sampling::Rate { fps: 1e300 }).err();
    assert!(matches!(e, Some(Error::BadSampling { .. })), "{e:?}");
    let e = sample_frames(
        &mut clip.opener(),
        Sampling::Windows {
            len: usize::MAX / 2,
            stride: 1,
        },
    )
    .err();
    assert!(matches!(e, Some(Error::BadSampling { .. })), "{e:?}");

    let uniform = Sampling::Uniform { num: 4 };
    // No frames.
    for s in [
        uniform,
        Sampling::Rate { fps: 5.0 },
        Sampling::Windows { len: 2, stride: 1 },
    ] {
        for count in [None, Some(0)] {
            let e = broken(count, vec![], s);
            assert!(matches!(e, Some(Error::EmptyVideo { .. })), "{s:?}: {e:?}");
        }
    }
    // Fewer frames than the container states.
    let e = broken(
        Some(10),
        (0..3).map(|i| frame(i, 8, 8, i as f64)).collect(),
        uniform,
    );
    assert!(
        matches!(e, Some(Error::CorruptVideo { frame: Some(3), .. })),
        "{e:?}"
    );
    // Pixels that do not fill the frame; times that are not numbers.
    let mut short = frame(0, 8, 8, 0.0);
    short.rgb.pop();
    let mut nan = frame(1, 8, 8, f64::NAN);
    nan.pts_s = f64::NAN;
    for frames in [vec![short], vec![frame(0, 8, 8, 0.0), nan]] {
        let e = broken(None, frames, Sampling::Rate { fps: 5.0 });
        assert!(matches!(e, Some(Error::CorruptVideo { .. })), "{e:?}");
    }
    // Raw frames of two sizes.
    let e = broken(
        Some(2),
        vec![frame(0, 8, 8, 0.0), frame(1, 4, 8, 0.1)],
        Sampling::Uniform { num: 2 },
    );
    assert!(matches!(e, Some(Error::BadSampling { .. })), "{e:?}");
    // ... which preprocessing accepts.
    let mut open = || -> mlmf::Result<Box<dyn FrameSource>> {
        Ok(Box::new(Broken {
            info: VideoInfo {
                path: "two-sizes".into(),
                width: 8,
                height: 8,
                frame_count: Some(2),
            },
            frames: vec![frame(0, 300, 200, 0.0), frame(1, 200, 300, 0.1)],
        }))
    };
    let s = sample_preprocessed(&mut open, Sampling::Uniform { num: 2 }, &pre).unwrap();
    assert_eq!(s.tensor.shape().dims(), &[2, 3, 224, 224]);
    // A sheet of no cells.
    let bad = SheetOptions {
        max_side: 0,
        ..SheetOptions::default()
    };
    let e = contact_sheet(&mut clip.opener(), Sampling::Uniform { num: 2 }, &bad).err();
    assert!(matches!(e, Some(Error::BadSampling { .. })), "{e:?}");
}

// ---- The real files through `open_video` ----

fn open_real(name: &str) -> impl FnMut() -> mlmf::Result<Box<dyn FrameSource>> {
    let path = video_dir().join(name);
    move || mlmf::multimodal::open_video(&path)
}

/// The clips the build decodes: MP4 only with the `video` feature.
fn real_clips() -> Vec<&'static str> {
    CLIPS
        .into_iter()
        .filter(|c| cfg!(feature = "video") || !c.ends_with(".mp4"))
        .collect()
}

#[test]
fn uniform_samples_of_the_real_clips_hash_as_the_fixture_lists() {
    for name in real_clips() {
        let j = frames_json(name);
        for t in [8usize, 16] {
            let listed = &j["uniform_sampling"][format!("T{t}")];
            let s = sample_frames(&mut open_real(name), Sampling::Uniform { num: t }).unwrap();
            let expected: Vec<usize> = listed["indices"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(s.samples.indices, expected, "{name} T {t}");
            let b = s.rgb.len() / t;
            for (k, want) in listed["sha256"].as_array().unwrap().iter().enumerate() {
                assert_eq!(
                    sha256(&s.rgb[k * b..(k + 1) * b]),
                    want.as_str().unwrap(),
                    "{name} T {t} slot {k}"
                );
            }
        }
    }
}

#[test]
fn rate_samples_of_the_real_clips_are_the_frames_ffmpeg_picks() {
    for &(name, fps, expected) in FFMPEG_FPS_ROUND_UP {
        if !real_clips().contains(&name) {
            continue;
        }
        let j = frames_json(name);
        let s = sample_frames(&mut open_real(name), Sampling::Rate { fps }).unwrap();
        assert_eq!(s.samples.indices, expected, "{name} at {fps} fps");
        let b = s.rgb.len() / expected.len();
        for (k, &i) in expected.iter().enumerate() {
            assert_eq!(
                sha256(&s.rgb[k * b..(k + 1) * b]),
                j["frames"][i]["sha256"].as_str().unwrap(),
                "{name} at {fps} fps, slot {k}"
            );
        }
    }
}

#[test]
fn sample_video_preprocesses_the_middle_frame_of_the_real_clips() {
    // T = 1 selects frame n / 2 (idx_0 = n div 2), which the fixture stores.
    let pre = ImagePreprocess::imagenet();
    for name in real_clips() {
        let n = frames_json(name)["frame_count"].as_u64().unwrap() as usize;
        let clip = Clip::fixture(name, true);
        let img = RgbImage::from_raw(clip.width, clip.height, clip.frame(n / 2)).unwrap();
        let want = f32s(&pre.apply(&img).unwrap());
        let s = mlmf::multimodal::video::sample_video(
            video_dir().join(name),
            Sampling::Uniform { num: 1 },
            &pre,
        )
        .unwrap();
        assert_eq!(s.tensor.shape().dims(), &[1, 3, 224, 224], "{name}");
        assert_eq!(s.samples.indices, vec![n / 2], "{name}");
        assert!(
            f32s(&s.tensor) == want,
            "{name}: not the middle frame preprocessed"
        );
    }
}
