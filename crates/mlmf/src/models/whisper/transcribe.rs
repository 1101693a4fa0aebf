//! Speech to text: [`Whisper`] puts the log-mel, the encoder, the decoder and the tokenizer
//! together and decodes greedily as faster-whisper 1.2.1 asks CTranslate2 to
//! (`../shared/fixtures/whisper/README.md`, "Decoding"):
//!
//! - Audio is cut into 30 s windows, each padded on its own (Whisper's `pad_or_trim`, the
//!   fixture's input; [`crate::ops::mel::Windowing::PerWindow`]); each window is encoded and
//!   decoded alone and the windows' tokens are joined in order.
//! - Prompt `<|startoftranscript|> <|notimestamps|>`; then the argmax of each step's logits,
//!   after setting `config.json`'s `suppress_ids` (and at the first step also
//!   `suppress_ids_begin`: a lone space and end-of-text) to the lowest f32, until
//!   `<|endoftext|>` or `min(positions / 2, positions - 1)` steps (CTranslate2's limit for
//!   `max_length` 448: 224).
//! - Text: the tokens decoded by `tokenizer.json`, the leading space stripped.
//!
//! faster-whisper's `transcribe` differs in the input: it pads the log-mel of the unpadded audio
//! with zeros instead of padding the audio, which changes tokens (the fixture README shows it
//! dropping a comma on jfk.wav). We follow Whisper's own padding, as the fixture does.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::formats::ModelFile;
use crate::multimodal::{decode_audio, resample};
use crate::ops::mel;
use crate::{Device, Tensor};

use super::{WhisperDecoder, WhisperEncoder};

/// Whisper's sample rate.
pub const SAMPLE_RATE: u32 = 16_000;
/// Samples per 30 s window.
const WINDOW: usize = 30 * SAMPLE_RATE as usize;
/// Samples per encoder output frame (two mel hops of 160).
const SAMPLES_PER_FRAME: usize = 320;

/// Whisper (encoder, decoder, tokenizer and decoding rules) on one device.
pub struct Whisper {
    dir: PathBuf,
    encoder: WhisperEncoder,
    decoder: WhisperDecoder,
    tokenizer: Tokenizer,
    prompt: Vec<u32>,
    end_of_text: u32,
    suppress: Vec<u32>,
    suppress_begin: Vec<u32>,
}

/// What [`Whisper::transcribe`] computes besides the text.
#[derive(Clone, Copy, Debug, Default)]
pub struct TranscribeOptions {
    /// Keep the last decoder layer's cross-attention ([`Transcript::attention`]).
    pub attention: bool,
}

/// Mean over heads of the last decoder layer's cross-attention: one row per generated token,
/// one column per encoder frame (20 ms of audio).
#[derive(Clone, Debug, PartialEq)]
pub struct CrossAttention {
    pub rows: usize,
    pub frames: usize,
    /// `rows * frames`, row-major.
    pub values: Vec<f32>,
    /// Each row's token as text.
    pub labels: Vec<String>,
}

/// Where the time of a transcription went (wall clock, the device synchronised at each
/// boundary).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timing {
    pub mel: Duration,
    pub encode: Duration,
    pub decode: Duration,
    /// From the start of [`Whisper::transcribe`] (samples in memory) to the first token of the
    /// first window.
    pub first_token: Duration,
}

/// A transcription.
#[derive(Clone, Debug)]
pub struct Transcript {
    /// The tokens' text, the leading space stripped.
    pub text: String,
    /// Every window's tokens in order, without the prompt and without `<|endoftext|>`.
    pub tokens: Vec<u32>,
    pub audio_seconds: f64,
    pub timing: Timing,
    pub attention: Option<CrossAttention>,
}

/// One window's greedy decoding.
#[derive(Clone, Debug)]
pub struct Decoded {
    pub tokens: Vec<u32>,
    /// With [`TranscribeOptions::attention`]: per token, the heads' mean cross-attention over
    /// the window's frames.
    pub attention: Vec<Vec<f32>>,
    /// Time to the first token's argmax.
    pub first_token: Duration,
}

impl Whisper {
    /// Whisper from a directory holding a CTranslate2 conversion: `model.bin`, `config.json`
    /// (its `suppress_ids` and `suppress_ids_begin`) and `tokenizer.json`, as faster-whisper
    /// reads it. Errors: a missing or unreadable file ([`Error::Io`]), a model that is not
    /// Whisper ([`Error::BadModel`], [`Error::WrongSpec`]) or lacks a variable
    /// ([`Error::TensorNotFound`]), a config or tokenizer that does not parse
    /// ([`Error::BadModel`], [`Error::Tokenizer`]).
    pub fn load(dir: &Path, device: &Device) -> Result<Whisper> {
        let file = ModelFile::open(dir.join("model.bin"))?;
        let encoder = WhisperEncoder::load(&file, device)?;
        let decoder = WhisperDecoder::load(&file, device)?;

        let config_path = dir.join("config.json");
        let text = std::fs::read(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let bad_config = |reason: String| Error::BadModel {
            path: config_path.clone(),
            reason,
        };
        let config: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| bad_config(e.to_string()))?;
        let ids = |key: &str| -> Result<Vec<u32>> {
            let list = config[key]
                .as_array()
                .ok_or_else(|| bad_config(format!("{key}: not a list")))?;
            list.iter()
                .map(|v| {
                    v.as_u64()
                        .and_then(|id| u32::try_from(id).ok())
                        .filter(|&id| (id as usize) < decoder.config().vocab)
                        .ok_or_else(|| bad_config(format!("{key}: {v} is not a token id")))
                })
                .collect()
        };
        let suppress = ids("suppress_ids")?;
        let suppress_begin = ids("suppress_ids_begin")?;

        let tok_path = dir.join("tokenizer.json");
        let bytes = std::fs::read(&tok_path).map_err(|e| Error::io(&tok_path, e))?;
        let tokenizer = Tokenizer::from_bytes(bytes).map_err(|e| Error::Tokenizer {
            path: tok_path.clone(),
            reason: e.to_string(),
        })?;
        let special = |token: &str| -> Result<u32> {
            tokenizer
                .token_to_id(token)
                .filter(|&id| (id as usize) < decoder.config().vocab)
                .ok_or_else(|| Error::Tokenizer {
                    path: tok_path.clone(),
                    reason: format!("no token {token} in the model's vocabulary"),
                })
        };
        let prompt = vec![
            special("<|startoftranscript|>")?,
            special("<|notimestamps|>")?,
        ];
        let end_of_text = special("<|endoftext|>")?;
        Ok(Whisper {
            dir: dir.to_path_buf(),
            encoder,
            decoder,
            tokenizer,
            prompt,
            end_of_text,
            suppress,
            suppress_begin,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn device(&self) -> &Device {
        self.encoder.device()
    }

    pub fn encoder(&self) -> &WhisperEncoder {
        &self.encoder
    }

    pub fn decoder(&self) -> &WhisperDecoder {
        &self.decoder
    }

    /// The prompt every window starts from (`<|startoftranscript|> <|notimestamps|>`).
    pub fn prompt(&self) -> &[u32] {
        &self.prompt
    }

    /// Transcribe an audio file of any format [`decode_audio`] reads: mixed to mono, resampled
    /// to 16 kHz, then [`Whisper::transcribe`]. Errors: the audio's ([`Error::EmptyAudio`] for a
    /// file with no samples, ...), then as [`Whisper::transcribe`].
    pub fn transcribe_file(&self, path: &Path, options: &TranscribeOptions) -> Result<Transcript> {
        let audio = decode_audio(path)?;
        if audio.is_empty() {
            return Err(Error::EmptyAudio { path: path.into() });
        }
        let samples = resample(&audio.mono(), audio.sample_rate, SAMPLE_RATE)?;
        self.transcribe_samples(&samples, path, options)
    }

    /// Transcribe 16 kHz mono `samples` of any length (see the module doc). Errors: no samples
    /// ([`Error::EmptyAudio`], path `<samples>`), the device's and ops' errors.
    pub fn transcribe(&self, samples: &[f32], options: &TranscribeOptions) -> Result<Transcript> {
        self.transcribe_samples(samples, Path::new("<samples>"), options)
    }

    fn transcribe_samples(
        &self,
        samples: &[f32],
        origin: &Path,
        options: &TranscribeOptions,
    ) -> Result<Transcript> {
        if samples.is_empty() {
            return Err(Error::EmptyAudio {
                path: origin.into(),
            });
        }
        let start = Instant::now();
        let mut timing = Timing::default();
        let mut tokens = Vec::new();
        let mut rows: Vec<Vec<f32>> = Vec::new();
        let mut labels = Vec::new();
        let mut frames = 0;
        for window in samples.chunks(WINDOW) {
            let t = Instant::now();
            let log_mel = mel::log_mel(window, self.encoder.config().mels, self.device())?;
            self.device().sync()?;
            timing.mel += t.elapsed();

            let t = Instant::now();
            let encoded = self.encoder.forward(&log_mel)?;
            self.device().sync()?;
            timing.encode += t.elapsed();

            let t = Instant::now();
            let decoded = self.decode(&encoded, options)?;
            timing.decode += t.elapsed();
            if timing.first_token.is_zero() {
                timing.first_token = t.duration_since(start) + decoded.first_token;
            }
            if options.attention {
                let window_frames = window.len().div_ceil(SAMPLES_PER_FRAME);
                frames = frames.max(window_frames);
                for (id, row) in decoded.tokens.iter().zip(decoded.attention) {
                    labels.push(self.token_text(*id));
                    rows.push(row);
                }
            }
            tokens.extend(decoded.tokens);
        }
        let attention = options.attention.then(|| {
            let frames = frames.min(rows.first().map_or(0, Vec::len));
            CrossAttention {
                rows: rows.len(),
                frames,
                values: rows.iter().flat_map(|r| r[..frames].to_vec()).collect(),
                labels,
            }
        });
        Ok(Transcript {
            text: self.text(&tokens)?,
            tokens,
            audio_seconds: samples.len() as f64 / f64::from(SAMPLE_RATE),
            timing,
            attention,
        })
    }

    /// The encoder output `[1, 1500, d_model]` of one window of at most 30 s of 16 kHz samples
    /// (zero-padded to 30 s). Errors: more than one window of samples ([`Error::OpArgument`]),
    /// the ops' errors.
    pub fn encode(&self, window: &[f32]) -> Result<Tensor> {
        if window.len() > WINDOW {
            return Err(Error::OpArgument {
                op: "Whisper::encode",
                argument: "samples",
                value: window.len() as u64,
                expected: "at most one 30 s window (480000 samples)",
            });
        }
        let log_mel = mel::log_mel(window, self.encoder.config().mels, self.device())?;
        self.encoder.forward(&log_mel)
    }

    /// Greedy decoding (module doc) of one window's encoder output `[1, frames, d_model]`.
    pub fn decode(&self, encoder_out: &Tensor, options: &TranscribeOptions) -> Result<Decoded> {
        let start = Instant::now();
        let config = self.decoder.config();
        let max_steps = (config.positions / 2).min(config.positions.saturating_sub(1));
        let cross = self.decoder.cross_kv(encoder_out)?;
        let mut cache = self.decoder.new_cache()?;
        let mut tokens = Vec::new();
        let mut attention = Vec::new();
        let mut first_token = Duration::ZERO;
        let mut feed = self.prompt.clone();
        for step in 0..max_steps {
            if cache.len(0) + feed.len() > config.positions {
                break;
            }
            let out = self
                .decoder
                .step(&feed, &mut cache, &cross, options.attention)?;
            let mut logits = last_row(&out.logits, config.vocab)?;
            for &id in &self.suppress {
                logits[id as usize] = f32::MIN;
            }
            if step == 0 {
                for &id in &self.suppress_begin {
                    logits[id as usize] = f32::MIN;
                }
            }
            let next = argmax(&logits);
            if step == 0 {
                first_token = start.elapsed();
            }
            if next == self.end_of_text {
                break;
            }
            if let Some(w) = &out.cross_attention {
                attention.push(mean_heads_last_row(w)?);
            }
            tokens.push(next);
            feed = vec![next];
        }
        Ok(Decoded {
            tokens,
            attention,
            first_token,
        })
    }

    /// The text of `tokens` (ids below `<|endoftext|>`; others, the special and timestamp
    /// tokens, are left out), the leading space stripped.
    pub fn text(&self, tokens: &[u32]) -> Result<String> {
        let ids: Vec<u32> = tokens
            .iter()
            .copied()
            .filter(|&id| id < self.end_of_text)
            .collect();
        let text = self
            .tokenizer
            .decode(&ids, true)
            .map_err(|e| Error::Tokenizer {
                path: self.dir.join("tokenizer.json"),
                reason: e.to_string(),
            })?;
        Ok(text.trim_start().to_string())
    }

    fn token_text(&self, id: u32) -> String {
        self.tokenizer
            .decode(&[id], false)
            .unwrap_or_else(|_| format!("<{id}>"))
    }
}

/// The last row of logits `[1, n, vocab]`, in host memory.
fn last_row(logits: &Tensor, vocab: usize) -> Result<Vec<f32>> {
    let all = logits.to_f32_vec()?;
    let start = all.len().checked_sub(vocab).ok_or(Error::OpIndex {
        op: "Whisper::decode",
        what: "logits",
        index: vocab as u64,
        len: all.len() as u64,
    })?;
    Ok(all[start..].to_vec())
}

/// The first index of the largest value (CTranslate2's greedy search keeps the first of equal
/// maxima too).
fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// The mean over heads of the last query row of attention weights `[1, heads, n, frames]`.
fn mean_heads_last_row(weights: &Tensor) -> Result<Vec<f32>> {
    let dims = weights.shape().dims().to_vec();
    let (heads, n, frames) = match dims[..] {
        [1, h, n, f] if h > 0 && n > 0 => (h, n, f),
        _ => {
            return Err(Error::OpRank {
                op: "Whisper::decode",
                tensor: weights.name().to_string(),
                shape: dims,
                expected: "attention weights [1, heads, n, frames]",
            })
        }
    };
    let w = weights.to_f32_vec()?;
    let mut mean = vec![0.0f32; frames];
    for h in 0..heads {
        let row = &w[(h * n + n - 1) * frames..(h * n + n) * frames];
        for (m, &x) in mean.iter_mut().zip(row) {
            *m += x;
        }
    }
    mean.iter_mut().for_each(|m| *m /= heads as f32);
    Ok(mean)
}
