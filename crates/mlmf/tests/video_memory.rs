//! Sampling decodes lazily: from a source of 100,000 frames (115 MB of pixels if kept), the
//! heap never holds more than the selected frames and a frame or two in flight. Measured with a
//! counting allocator (per thread, so tests running beside each other do not mix).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::PathBuf;

use mlmf::multimodal::preprocess::image::ImagePreprocess;
use mlmf::multimodal::video::sample::{sample_frames, sample_preprocessed, Sampling};
use mlmf::multimodal::video::{contact_sheet, Frame, FrameSource, SheetOptions, VideoInfo};

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn add(delta: isize) {
    // `try_with`: the allocator also runs while thread-locals are torn down.
    let _ = LIVE.try_with(|live| {
        let v = live.get() + delta;
        live.set(v);
        let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Peak growth of this thread's heap while `f` runs, in bytes.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    let peak = PEAK.with(Cell::get) - base;
    (out, peak.max(0) as usize)
}

/// The counter sees what `f` allocates: its result at least.
fn assert_counted(peak: usize, kept: usize) {
    eprintln!("peak heap {peak} bytes, result {kept} bytes");
    assert!(
        peak >= kept,
        "peak {peak} below the {kept} bytes the result holds"
    );
}

const N: usize = 100_000;
const W: u32 = 24;
const H: u32 = 16;
const FRAME_BYTES: usize = (W * H * 3) as usize;

/// `N` frames of `W` x `H`, made as they are asked for.
struct Many {
    info: VideoInfo,
    next: usize,
}

impl Many {
    fn open(known: bool) -> mlmf::Result<Box<dyn FrameSource>> {
        Ok(Box::new(Many {
            info: VideoInfo {
                path: PathBuf::from("many-frames"),
                width: W,
                height: H,
                frame_count: known.then_some(N),
            },
            next: 0,
        }))
    }
}

impl FrameSource for Many {
    fn info(&self) -> &VideoInfo {
        &self.info
    }

    fn next_frame(&mut self) -> mlmf::Result<Option<Frame>> {
        if self.next == N {
            return Ok(None);
        }
        let i = self.next;
        self.next += 1;
        Ok(Some(Frame {
            index: i,
            width: W,
            height: H,
            rgb: vec![(i % 251) as u8; FRAME_BYTES],
            pts_s: i as f64 / 30.0,
            duration_s: 1.0 / 30.0,
        }))
    }
}

#[test]
fn sampling_a_long_source_keeps_only_the_selected_frames() {
    let all = N * FRAME_BYTES;
    for known in [true, false] {
        let (s, peak) = peak_during(|| {
            sample_frames(&mut || Many::open(known), Sampling::Uniform { num: 8 }).unwrap()
        });
        assert_eq!(s.samples.indices[0], N / 16);
        assert_eq!(s.rgb.len(), 8 * FRAME_BYTES);
        assert_counted(peak, s.rgb.len());
        // 8 selected frames and their indices/times, plus frames in flight and the source.
        let bound = 8 * (FRAME_BYTES + 16) + 4 * FRAME_BYTES + 4096;
        assert!(
            peak <= bound,
            "uniform (count known: {known}): peak heap {peak} bytes, bound {bound}, all frames {all}"
        );
    }

    // A rate of 1 frame per second over 3333 s of video: 3334 outputs, grown as they come.
    let (s, peak) = peak_during(|| {
        sample_frames(&mut || Many::open(false), Sampling::Rate { fps: 1.0 }).unwrap()
    });
    let k = s.samples.indices.len();
    assert_eq!(k, N.div_ceil(30));
    assert_counted(peak, s.rgb.len());
    // Amortised growth may reserve up to twice the output, and copy it once.
    let bound = 4 * k * (FRAME_BYTES + 16) + 4 * FRAME_BYTES + 4096;
    assert!(
        peak <= bound,
        "rate: peak heap {peak} bytes, bound {bound}, all frames {all}"
    );

    // Windows of 4 every 25,000 frames: 4 windows.
    let (s, peak) = peak_during(|| {
        sample_frames(
            &mut || Many::open(false),
            Sampling::Windows {
                len: 4,
                stride: 25_000,
            },
        )
        .unwrap()
    });
    assert_eq!(s.samples.lead, vec![4, 4]);
    assert_counted(peak, s.rgb.len());
    let bound = 4 * 16 * (FRAME_BYTES + 16) + 4 * FRAME_BYTES + 4096;
    assert!(
        peak <= bound,
        "windows: peak heap {peak} bytes, bound {bound}, all frames {all}"
    );
}

#[test]
fn preprocessing_and_the_contact_sheet_keep_only_the_selected_frames() {
    let pre = ImagePreprocess {
        resize_shorter: 16,
        crop: 16,
        ..ImagePreprocess::imagenet()
    };
    let slot = 3 * 16 * 16 * 4;
    let (s, peak) = peak_during(|| {
        sample_preprocessed(
            &mut || Many::open(false),
            Sampling::Uniform { num: 8 },
            &pre,
        )
        .unwrap()
    });
    assert_eq!(s.tensor.shape().dims(), &[8, 3, 16, 16]);
    assert_counted(peak, 8 * slot);
    // The output (and its copy into the tensor), plus one frame being preprocessed.
    let bound = 3 * 8 * (slot + 16) + 8 * FRAME_BYTES + 4 * slot + 8192;
    assert!(
        peak <= bound,
        "preprocessed: peak heap {peak} bytes, bound {bound}"
    );

    let (sheet, peak) = peak_during(|| {
        contact_sheet(
            &mut || Many::open(false),
            Sampling::Uniform { num: 8 },
            &SheetOptions::default(),
        )
        .unwrap()
    });
    // 8 frames: 3 x 3 cells of 24 x 16 with 4-pixel gaps.
    assert_eq!(sheet.dimensions(), (3 * 24 + 4 * 4, 3 * 16 + 4 * 4));
    let sheet_bytes = (3 * 24 + 4 * 4) * (3 * 16 + 4 * 4) * 3;
    assert_counted(peak, sheet_bytes);
    let bound = 8 * (FRAME_BYTES + 16) + sheet_bytes + 4 * FRAME_BYTES + 4096;
    assert!(
        peak <= bound,
        "sheet: peak heap {peak} bytes, bound {bound}"
    );
}
