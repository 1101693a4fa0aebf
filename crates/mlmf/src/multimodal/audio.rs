//! Audio file -> f32 samples per channel, through `symphonia`: WAV (integer PCM 8 to 32 bits and
//! float), FLAC, MP3 and Ogg Vorbis, recognised by their content (no extension hint).
//!
//! Integer PCM becomes `int / 2^(bits-1)` exactly (symphonia's sample conversion divides by that
//! power of two). Sample counts are the ones the file declares: gapless decoding is on, so an
//! MP3's encoder delay and padding (LAME tag) and a Vorbis stream's final-page granule position
//! trim the decoded frames, as ffmpeg and libsndfile report them.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use symphonia::core::audio::{AudioBuffer, Signal};
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::{MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use crate::error::{Error, Result};

/// Decoded audio: planar f32 samples, one `Vec` per channel, all of the same length.
#[derive(Clone, Debug, PartialEq)]
pub struct Audio {
    /// Samples per second.
    pub sample_rate: u32,
    /// `channels[c][i]`: sample `i` of channel `c`, in the file's channel order.
    pub channels: Vec<Vec<f32>>,
}

impl Audio {
    /// Samples per channel.
    pub fn len(&self) -> usize {
        self.channels.first().map_or(0, Vec::len)
    }

    /// True when there are no samples (never the case for an `Audio` from [`decode_audio`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of channels.
    pub fn num_channels(&self) -> usize {
        self.channels.len()
    }

    /// The mean of the channels, sample by sample (a mono file's own samples, unchanged).
    pub fn mono(&self) -> Vec<f32> {
        match self.channels.as_slice() {
            [] => Vec::new(),
            [only] => only.clone(),
            [first, rest @ ..] => {
                let mut sum = first.clone();
                for ch in rest {
                    for (s, &x) in sum.iter_mut().zip(ch) {
                        *s += x;
                    }
                }
                let n = self.channels.len() as f32;
                sum.iter_mut().for_each(|s| *s /= n);
                sum
            }
        }
    }
}

/// Decodes the first audio track of the file at `path`.
///
/// Errors: [`Error::Io`] when the file cannot be opened or read (FIFOs and other non-regular files
/// are refused), [`Error::UnsupportedAudio`] when its content is none of the formats above (or
/// uses a feature symphonia does not decode), [`Error::CorruptAudio`] when it is malformed or
/// holds fewer samples than its header declares, [`Error::EmptyAudio`] when it holds none.
pub fn decode_audio(path: &Path) -> Result<Audio> {
    let file = mlmf_core::files::open_regular(path)?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if file_len == 0 {
        return Err(Error::EmptyAudio { path: path.into() });
    }
    let unsupported = |reason: String| Error::UnsupportedAudio {
        path: path.into(),
        reason,
    };
    let corrupt = |reason: String| Error::CorruptAudio {
        path: path.into(),
        reason,
    };
    // Maps an error from symphonia; `probing` tells an unrecognised file from a broken one.
    let sym = |e: SymError, probing: bool| match e {
        SymError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            corrupt("unexpected end of file".into())
        }
        SymError::IoError(io) => Error::io(path, io),
        SymError::Unsupported(what) => unsupported(what.into()),
        SymError::DecodeError(what) if probing => unsupported(what.into()),
        SymError::DecodeError(what) => corrupt(what.into()),
        SymError::LimitError(what) => corrupt(format!("limit reached: {what}")),
        SymError::SeekError(kind) => corrupt(format!("seek error: {kind:?}")),
        SymError::ResetRequired => unsupported("a stream whose parameters change midway".into()),
    };

    if let Some(reason) = ogg_cut(&file, file_len).map_err(|e| Error::io(path, e))? {
        return Err(corrupt(reason));
    }
    if let Some(reason) = wav_header_problem(&file, file_len).map_err(|e| Error::io(path, e))? {
        return Err(corrupt(reason));
    }

    let mss = MediaSourceStream::new(Box::new(file), MediaSourceStreamOptions::default());
    let format_opts = FormatOptions {
        // Trim MP3 delay/padding and Vorbis end padding as the file declares them.
        enable_gapless: true,
        ..Default::default()
    };
    let probed = symphonia::default::get_probe()
        .format(&Hint::new(), mss, &format_opts, &MetadataOptions::default())
        .map_err(|e| sym(e, true))?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| unsupported("no audio track".into()))?;
    let track_id = track.id;
    let declared = track.codec_params.n_frames;
    let mut sample_rate = track.codec_params.sample_rate;
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|e| sym(e, true))?;

    let mut channels: Vec<Vec<f32>> = Vec::new();
    let mut buf: Option<AudioBuffer<f32>> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            // symphonia ends every stream with UnexpectedEof; a cut file is caught below by
            // comparing with the declared length.
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(sym(e, false)),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = decoder.decode(&packet).map_err(|e| sym(e, false))?;
        let spec = *decoded.spec();
        let n_ch = spec.channels.count();
        if channels.is_empty() {
            if n_ch == 0 {
                return Err(corrupt("a stream with no channels".into()));
            }
            channels = vec![Vec::new(); n_ch];
            sample_rate = Some(spec.rate);
        } else if n_ch != channels.len() || Some(spec.rate) != sample_rate {
            return Err(unsupported(
                "channel count or sample rate changes midway".into(),
            ));
        }
        // The decoder sized its own buffer (bounded by the codec); ours follows it.
        let cap = decoded.capacity();
        let out = match &mut buf {
            Some(b) if b.capacity() >= cap => b,
            _ => buf.insert(AudioBuffer::new(cap as u64, spec)),
        };
        decoded.convert(out);
        for (c, dst) in channels.iter_mut().enumerate() {
            dst.extend_from_slice(out.chan(c));
        }
    }

    let got = channels.first().map_or(0, Vec::len) as u64;
    if got == 0 {
        return Err(Error::EmptyAudio { path: path.into() });
    }
    if let Some(n) = declared {
        if got < n {
            return Err(corrupt(format!(
                "truncated: {got} samples per channel decoded, the header declares {n}"
            )));
        }
    }
    let sample_rate = sample_rate
        .filter(|&r| r > 0)
        .ok_or_else(|| corrupt("no sample rate".into()))?;
    Ok(Audio {
        sample_rate,
        channels,
    })
}

/// For an Ogg file (`OggS` at offset 0): why it looks cut short, or None when its last page is
/// complete and marked end-of-stream (RFC 3533). symphonia takes the length of a Vorbis stream
/// from the last page it finds, so a file cut between pages would otherwise decode as a shorter,
/// valid stream. Leaves the file positioned at 0.
fn ogg_cut(mut file: &File, file_len: u64) -> std::io::Result<Option<String>> {
    let mut magic = [0u8; 4];
    let is_ogg = file.read_exact(&mut magic).is_ok() && &magic == b"OggS";
    let result = if is_ogg {
        // The largest Ogg page: 27-byte header, 255 lacing values, 255 * 255 bytes of body.
        const MAX_PAGE: u64 = 27 + 255 + 255 * 255;
        let start = file_len.saturating_sub(MAX_PAGE);
        file.seek(SeekFrom::Start(start))?;
        let mut tail = Vec::with_capacity(MAX_PAGE as usize);
        file.take(MAX_PAGE).read_to_end(&mut tail)?;
        let last = tail.windows(4).rposition(|w| w == b"OggS");
        Some(match last {
            None => "no Ogg page in the last 65 KiB".to_string(),
            Some(pos) => {
                let page = &tail[pos..];
                let lacing_end = page.get(26).map(|&n| 27 + usize::from(n));
                let body: Option<usize> = lacing_end
                    .and_then(|end| page.get(27..end))
                    .map(|lacing| lacing.iter().map(|&b| usize::from(b)).sum());
                match (lacing_end, body) {
                    (Some(end), Some(body)) if end + body == page.len() && page[5] & 4 != 0 => {
                        return file.seek(SeekFrom::Start(0)).map(|_| None);
                    }
                    (Some(end), Some(body)) if end + body == page.len() => {
                        "the last Ogg page is not marked end-of-stream".to_string()
                    }
                    _ => "the file ends inside an Ogg page".to_string(),
                }
            }
        })
    } else {
        None
    };
    file.seek(SeekFrom::Start(0))?;
    Ok(result.map(|r| format!("truncated: {r}")))
}

/// For a RIFF/WAVE file: why its chunk headers cannot be trusted, or None. symphonia 0.5.5 reads
/// a `LIST`/`INFO` entry into a buffer of the size the entry declares (checked only against the
/// declared RIFF size, itself from the file: a 100-byte file can ask for 4 GiB), and panics on a
/// sample rate of 0 (`TimeBase::new`). So before it parses anything, every chunk up to `data`
/// must fit in the file (`data` may not: a cut file is reported from the decoded count), and the
/// `fmt ` chunk's sample rate must not be 0. Leaves the file positioned at 0.
fn wav_header_problem(mut file: &File, file_len: u64) -> std::io::Result<Option<String>> {
    // At most this many chunk headers are looked at (each costs a read and a seek).
    const MAX_CHUNKS: usize = 1024;
    let mut head = [0u8; 12];
    let is_wav =
        file.read_exact(&mut head).is_ok() && &head[..4] == b"RIFF" && &head[8..] == b"WAVE";
    let mut problem = None;
    let mut pos = 12u64;
    for _ in 0..MAX_CHUNKS {
        if !is_wav {
            break;
        }
        let mut header = [0u8; 8];
        file.seek(SeekFrom::Start(pos))?;
        if file.read_exact(&mut header).is_err() {
            break;
        }
        let tag = &header[..4];
        let len = u64::from(u32::from_le_bytes([
            header[4], header[5], header[6], header[7],
        ]));
        if tag == b"data" {
            break;
        }
        let left = file_len.saturating_sub(pos + 8);
        if len > left {
            problem = Some(format!(
                "the {:?} chunk at byte {pos} declares {len} bytes, the file has {left} after its header",
                String::from_utf8_lossy(tag)
            ));
            break;
        }
        if tag == b"fmt " && len >= 8 {
            let mut fmt = [0u8; 8];
            file.read_exact(&mut fmt)?;
            let rate = u32::from_le_bytes([fmt[4], fmt[5], fmt[6], fmt[7]]);
            if rate == 0 {
                problem = Some("a sample rate of 0 in the fmt chunk".to_string());
                break;
            }
        }
        // Chunks are padded to an even length.
        pos += 8 + len + (len & 1);
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(problem)
}
