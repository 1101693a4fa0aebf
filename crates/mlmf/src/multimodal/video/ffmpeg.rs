//! Whatever the system's FFmpeg decodes (MP4/H.264, WebM, AVI, ...), through `ffmpeg-next`:
//! the best video stream, decoded one packet at a time and drained at the end of the file (a
//! decoder holds frames back for B-frame reordering), each frame converted to RGB24 as the
//! `ffmpeg` command converts it by default: libswscale with one algorithm flag (BILINEAR; any
//! single one gives the same bytes when nothing is scaled), no colour-space override (BT.601,
//! limited-range input unless the stream says otherwise). Not `FAST_BILINEAR`, which
//! ffmpeg-next's `converter()` helpers use: it differs for pixel formats other than yuv420p.
//! Times are the frames' best-effort timestamps in the stream's time base, as `ffmpeg` uses them.

use std::path::Path;

use ff::format::Pixel;
use ff::software::scaling::{Context as Scaler, Flags};
use ffmpeg_next as ff;

use super::{Frame, FrameSource, VideoInfo, MAX_ALLOC, MAX_SIDE};
use crate::error::{Error, Result};

pub(super) struct FfmpegSource {
    info: VideoInfo,
    input: ff::format::context::Input,
    decoder: ff::decoder::Video,
    stream: usize,
    /// The stream's time base, seconds per tick as numerator and denominator.
    time_base: (f64, f64),
    /// The container's frame count, when it states one (checked at the end: a cut file must not
    /// end early in silence).
    declared: Option<usize>,
    scaler: Option<Scaler>,
    decoded: ff::frame::Video,
    rgb: ff::frame::Video,
    index: usize,
    eof_sent: bool,
    done: bool,
}

impl FfmpegSource {
    pub(super) fn open(path: &Path) -> Result<Self> {
        let unsupported = |reason: String| Error::UnsupportedVideo {
            path: path.into(),
            reason,
        };
        ff::init().map_err(|e| unsupported(format!("FFmpeg did not initialise: {e}")))?;
        let input = ff::format::input(path).map_err(|e| {
            let reason = format!("FFmpeg cannot open it as video: {e}");
            // An ISO media file (MP4, MOV, 3GP) that FFmpeg cannot read is damaged, e.g. cut
            // before its `moov` box; other content is simply not a format FFmpeg knows.
            if is_iso_media(path) {
                Error::CorruptVideo {
                    path: path.into(),
                    frame: None,
                    reason,
                }
            } else {
                unsupported(reason)
            }
        })?;
        let stream = input
            .streams()
            .best(ff::media::Type::Video)
            .ok_or_else(|| unsupported("no video stream".into()))?;
        let index = stream.index();
        let time_base = stream.time_base();
        let declared = usize::try_from(stream.frames()).ok().filter(|&n| n > 0);
        let mut context = ff::codec::context::Context::from_parameters(stream.parameters())
            .map_err(|e| unsupported(format!("video stream {index}: {e}")))?;
        // As the ffmpeg command decodes: frame threads, as many as cores (bytes do not change).
        context.set_threading(ff::codec::threading::Config::kind(
            ff::codec::threading::Type::Frame,
        ));
        let decoder = context
            .decoder()
            .video()
            .map_err(|e| unsupported(format!("video stream {index}: no decoder: {e}")))?;
        let (width, height) = (decoder.width(), decoder.height());
        if width == 0 || height == 0 {
            return Err(Error::CorruptVideo {
                path: path.into(),
                frame: None,
                reason: format!("video stream {index} of {width}x{height} pixels"),
            });
        }
        check_size(path, width, height)?;
        let time_base = if time_base.denominator() > 0 && time_base.numerator() > 0 {
            (
                f64::from(time_base.numerator()),
                f64::from(time_base.denominator()),
            )
        } else {
            (0.0, 1.0)
        };
        Ok(FfmpegSource {
            info: VideoInfo {
                path: path.into(),
                width,
                height,
                frame_count: None,
            },
            input,
            decoder,
            stream: index,
            time_base,
            declared,
            scaler: None,
            decoded: ff::frame::Video::empty(),
            rgb: ff::frame::Video::empty(),
            index: 0,
            eof_sent: false,
            done: false,
        })
    }

    fn corrupt(&self, reason: String) -> Error {
        Error::CorruptVideo {
            path: self.info.path.clone(),
            frame: Some(self.index),
            reason,
        }
    }

    /// Feeds the decoder until it yields a frame into `self.decoded`; false after the last one.
    fn receive(&mut self) -> Result<bool> {
        loop {
            match self.decoder.receive_frame(&mut self.decoded) {
                Ok(()) => return Ok(true),
                Err(ff::Error::Eof) => return Ok(false),
                Err(ff::Error::Other { errno }) if errno == ff::util::error::EAGAIN => {}
                Err(e) => return Err(self.corrupt(format!("decoding: {e}"))),
            }
            if self.eof_sent {
                return Ok(false);
            }
            let mut packet = ff::Packet::empty();
            match packet.read(&mut self.input) {
                Ok(()) => {
                    if packet.stream() == self.stream {
                        self.decoder
                            .send_packet(&packet)
                            .map_err(|e| self.corrupt(format!("decoding: {e}")))?;
                    }
                }
                Err(ff::Error::Eof) => {
                    // Drain: the frames the decoder still holds come out after EOF is sent.
                    self.decoder
                        .send_eof()
                        .map_err(|e| self.corrupt(format!("draining the decoder: {e}")))?;
                    self.eof_sent = true;
                }
                Err(e) => return Err(self.corrupt(format!("reading a packet: {e}"))),
            }
        }
    }

    fn convert(&mut self) -> Result<Frame> {
        let (w, h) = (self.decoded.width(), self.decoded.height());
        if (w, h) != (self.info.width, self.info.height) {
            return Err(self.corrupt(format!(
                "frame of {w}x{h} in a {}x{} stream",
                self.info.width, self.info.height
            )));
        }
        let format = self.decoded.format();
        let stale = self
            .scaler
            .as_ref()
            .is_none_or(|s| s.input().format != format);
        if stale {
            let scaler = Scaler::get(format, w, h, Pixel::RGB24, w, h, Flags::BILINEAR)
                .map_err(|e| self.corrupt(format!("no RGB conversion from {format:?}: {e}")))?;
            self.scaler = Some(scaler);
            self.rgb = ff::frame::Video::empty();
        }
        let Some(scaler) = self.scaler.as_mut() else {
            return Err(self.corrupt("no RGB conversion".into()));
        };
        if let Err(e) = scaler.run(&self.decoded, &mut self.rgb) {
            return Err(self.corrupt(format!("RGB conversion: {e}")));
        }
        let (row, stride) = (w as usize * 3, self.rgb.stride(0));
        let data = self.rgb.data(0);
        let mut rgb = Vec::with_capacity(row * h as usize);
        for y in 0..h as usize {
            let line = data
                .get(y * stride..y * stride + row)
                .ok_or_else(|| self.corrupt("short RGB plane".into()))?;
            rgb.extend_from_slice(line);
        }
        // ticks * num / den: correctly rounded seconds for the usual 1/den time bases.
        let (num, den) = self.time_base;
        let ticks = |t: i64| t as f64 * num / den;
        Ok(Frame {
            index: self.index,
            width: w,
            height: h,
            rgb,
            pts_s: self.decoded.timestamp().map_or(0.0, ticks),
            duration_s: ticks(self.decoded.packet().duration.max(0)),
        })
    }
}

/// True when the file starts with an ISO base media `ftyp` box.
fn is_iso_media(path: &Path) -> bool {
    let mut head = [0u8; 8];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok_and(|()| &head[4..8] == b"ftyp")
}

/// Refuses a frame size over the limits before any frame of it is converted.
fn check_size(path: &Path, width: u32, height: u32) -> Result<()> {
    if width > MAX_SIDE || height > MAX_SIDE || u64::from(width) * u64::from(height) * 3 > MAX_ALLOC
    {
        return Err(Error::UnsupportedVideo {
            path: path.into(),
            reason: format!(
                "frames of {width}x{height} pixels (at most {MAX_SIDE} a side and {MAX_ALLOC} \
                 bytes)"
            ),
        });
    }
    Ok(())
}

impl FrameSource for FfmpegSource {
    fn info(&self) -> &VideoInfo {
        &self.info
    }

    fn next_frame(&mut self) -> Result<Option<Frame>> {
        if self.done {
            return Ok(None);
        }
        let result = match self.receive() {
            Ok(true) => self.convert().map(Some),
            Ok(false) if self.index == 0 => Err(Error::EmptyVideo {
                path: self.info.path.clone(),
            }),
            Ok(false) => match self.declared {
                Some(n) if n > self.index => Err(self.corrupt(format!(
                    "the container declares {n} frames but only {} decode",
                    self.index
                ))),
                _ => Ok(None),
            },
            Err(e) => Err(e),
        };
        match &result {
            Ok(Some(_)) => self.index += 1,
            _ => self.done = true,
        }
        result
    }
}
