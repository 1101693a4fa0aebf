//! One pipeline over the modalities: inputs by modality -> each modality's preprocessing and
//! encoder (an [`Encoder`], on the device the caller gives it) -> pooled features
//! `[batch, width]` -> a fusion module ([`Fusion`]) -> its outputs.
//!
//! Encoders today: [`TextEncoder`] (a BERT sentence embedder such as all-MiniLM-L6-v2: the
//! tokenizer, the encoder, mean pooling over real tokens and L2 normalisation, all on its
//! device), [`ImageEncoder`] (torchvision's MobileNetV2: image files through the ImageNet
//! preprocessing, or tensors already preprocessed, to its 1280 pooled features) and
//! [`VideoEncoder`] (MobileNetV2 over each sampled frame of a clip `[T, 3, H, W]`, the features
//! averaged over T). Audio has no encoder yet: any type implementing [`Encoder`] plugs in (a
//! Whisper encoder over [`crate::ops::mel::log_mel`] of [`Input::Audio`]).
//!
//! Features stay on the device: an encoder's output goes to the fusion module as a tensor, and
//! is moved only when the fusion runs on another device ([`Device::same_as`]); nothing is read
//! back between encoder and fusion when they share one ([`crate::Gpu::readbacks`] counts it in
//! the tests).
//!
//! ```no_run
//! use mlmf::fusion::gate::AttentionGate;
//! use mlmf::models::{bert::BertEmbedder, cache_dir, mobilenet_v2::MobileNetV2};
//! use mlmf::multimodal::pipeline::{Fusion, ImageEncoder, Input, Modality, MultiModal, TextEncoder};
//! use mlmf::{Device, ModelFile};
//! let gpu = Device::gpu()?;
//! let text = BertEmbedder::open(cache_dir().join("all-MiniLM-L6-v2"), &gpu)?;
//! let pth = ModelFile::open(cache_dir().join("mobilenet_v2-b0353104.pth"))?;
//! let image = MobileNetV2::load(&pth, &gpu)?;
//! // A gate with projections `text.weight [E, 384]` and `image.weight [E, 1280]`.
//! let gate = AttentionGate::load_modalities(&ModelFile::open("gate.safetensors")?, "",
//!     &["text", "image"], &gpu)?;
//! let pipeline = MultiModal::new(Fusion::AttentionGate(gate), gpu.clone())
//!     .encoder(Modality::Text, TextEncoder::new(text))
//!     .encoder(Modality::Image, ImageEncoder::new(image));
//! let out = pipeline.run(vec![
//!     (Modality::Text, Input::Text(vec!["a cat".into()])),
//!     (Modality::Image, Input::ImageFiles(vec!["chelsea.png".into()])),
//! ])?;
//! let weights = out.get("modality_weights").unwrap().to_f32_vec()?; // [1, 2]
//! # Ok::<(), mlmf::Error>(())
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fusion::early::EarlyFusion;
use crate::fusion::gate::AttentionGate;
use crate::fusion::late::LateFusion;
use crate::models::bert::BertEmbedder;
use crate::models::mobilenet_v2::MobileNetV2;
use crate::multimodal::video::sample::{sample_video, Sampling};
use crate::multimodal::{decode_audio, ImagePreprocess};
use crate::ops::matmul::{self, MatmulOptions};
use crate::ops::norm;
use crate::{Device, Tensor};

/// The four modalities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Modality {
    Text,
    Image,
    Audio,
    Video,
}

impl Modality {
    /// `text`, `image`, `audio`, `video`: the names of the fusion state dicts and inputs.
    pub fn name(self) -> &'static str {
        match self {
            Modality::Text => "text",
            Modality::Image => "image",
            Modality::Audio => "audio",
            Modality::Video => "video",
        }
    }
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One modality's input, before its preprocessing.
pub enum Input {
    /// Sentences, one batch row each (tokenized by the text encoder).
    Text(Vec<String>),
    /// Image files, one batch row each (preprocessed by the image encoder).
    ImageFiles(Vec<PathBuf>),
    /// Images already preprocessed, `[batch, 3, H, W]`.
    Image(Tensor),
    /// Mono samples at `rate` Hz (an audio encoder computes its own features, e.g. a log-mel).
    Audio { samples: Vec<f32>, rate: u32 },
    /// Sampled, preprocessed frames of one clip `[T, 3, H, W]`, or of a batch of clips
    /// `[batch, T, 3, H, W]` (as the video sampler produces them).
    Video(Tensor),
    /// A video file (anything [`crate::multimodal::open_video`] opens), sampled by the video
    /// encoder with `sampling` and preprocessed as its model expects; windows become a batch of
    /// clips.
    VideoFile { path: PathBuf, sampling: Sampling },
}

impl Input {
    /// An audio file decoded ([`crate::multimodal::decode_audio`]: WAV, FLAC, MP3, Ogg Vorbis)
    /// and mixed to mono by the mean, at its own rate ([`Input::Audio`]; an audio encoder
    /// resamples to what its model takes).
    pub fn audio_file(path: impl AsRef<Path>) -> Result<Input> {
        let audio = decode_audio(path.as_ref())?;
        Ok(Input::Audio {
            samples: audio.mono(),
            rate: audio.sample_rate,
        })
    }
}

impl Input {
    fn kind(&self) -> &'static str {
        match self {
            Input::Text(_) => "text",
            Input::ImageFiles(_) => "image files",
            Input::Image(_) => "an image tensor",
            Input::Audio { .. } => "audio samples",
            Input::Video(_) => "video frames",
            Input::VideoFile { .. } => "a video file",
        }
    }
}

/// A modality's encoder: its input to pooled features `[batch, width]` on [`Encoder::device`].
pub trait Encoder {
    /// The device its weights are on, where its features come out.
    fn device(&self) -> &Device;
    /// The pooled features of `input`. Errors: an input of a kind it does not take
    /// ([`Error::BadModel`] naming the encoder and the input), and the model's errors.
    fn encode(&self, input: &Input) -> Result<Tensor>;
}

fn wrong_input(encoder: &'static str, input: &Input) -> Error {
    Error::BadModel {
        path: PathBuf::from(encoder),
        reason: format!("this encoder does not take {}", input.kind()),
    }
}

/// A BERT sentence embedder as an encoder: [`Input::Text`] to `[batch, hidden]`, the mean of the
/// last hidden state over real tokens, L2-normalised (sentence-transformers' pooling), computed
/// on the model's device (a pooling matrix product, then an RMS norm scaled by `1/sqrt(hidden)`,
/// which is `x / |x|`).
pub struct TextEncoder {
    model: BertEmbedder,
}

impl TextEncoder {
    pub fn new(model: BertEmbedder) -> TextEncoder {
        TextEncoder { model }
    }

    pub fn model(&self) -> &BertEmbedder {
        &self.model
    }
}

impl Encoder for TextEncoder {
    fn device(&self) -> &Device {
        self.model.device()
    }

    fn encode(&self, input: &Input) -> Result<Tensor> {
        let Input::Text(texts) = input else {
            return Err(wrong_input("TextEncoder", input));
        };
        let encoded = self.model.tokenizer().encode_batch(texts)?;
        let hidden = self.model.forward(&encoded)?;
        let (batch, len, dim) = (encoded.batch, encoded.len, self.model.config().hidden_size);
        // Row b of the pooling matrix: 1/count at b's real tokens, 0 at padding.
        let mut pool = vec![0f32; batch * len];
        for (row, mask) in pool
            .chunks_exact_mut(len.max(1))
            .zip(encoded.attention_mask.chunks_exact(len.max(1)))
        {
            let count = mask.iter().filter(|&&m| m != 0).count().max(1) as f32;
            for (p, &m) in row.iter_mut().zip(mask) {
                *p = if m != 0 { 1.0 / count } else { 0.0 };
            }
        }
        let device = self.device();
        let pool = Tensor::from_f32("pooling", vec![batch, 1, len], &pool)?.to_device(device)?;
        let mean =
            matmul::matmul(&pool, &hidden, MatmulOptions::default())?.reshape(vec![batch, dim])?;
        let scale = vec![1.0 / (dim as f32).sqrt(); dim];
        let scale = Tensor::from_f32("l2", vec![dim], &scale)?.to_device(device)?;
        norm::rms_norm(&mean, &scale, 0.0)
    }
}

/// MobileNetV2 as an image encoder: [`Input::ImageFiles`] (ImageNet preprocessing, Pillow-exact)
/// or [`Input::Image`] `[batch, 3, H, W]` to the pooled features `[batch, 1280]`.
pub struct ImageEncoder {
    model: MobileNetV2,
    preprocess: ImagePreprocess,
}

impl ImageEncoder {
    pub fn new(model: MobileNetV2) -> ImageEncoder {
        ImageEncoder {
            model,
            preprocess: ImagePreprocess::imagenet(),
        }
    }

    pub fn model(&self) -> &MobileNetV2 {
        &self.model
    }

    fn preprocess(&self, paths: &[PathBuf]) -> Result<Tensor> {
        let mut values = Vec::new();
        let mut dims = vec![paths.len()];
        for path in paths {
            let x = self.preprocess.load(path)?;
            if dims.len() == 1 {
                dims.extend_from_slice(x.shape().dims());
            }
            values.extend(x.to_f32_vec()?);
        }
        Tensor::from_f32("images", dims, &values)
    }
}

impl Encoder for ImageEncoder {
    fn device(&self) -> &Device {
        self.model.device()
    }

    fn encode(&self, input: &Input) -> Result<Tensor> {
        match input {
            Input::ImageFiles(paths) => self.model.features(&self.preprocess(paths)?),
            Input::Image(x) => self.model.features(x),
            _ => Err(wrong_input("ImageEncoder", input)),
        }
    }
}

/// MobileNetV2 over the frames of a clip: [`Input::Video`] `[T, 3, H, W]` (one clip) or
/// `[batch, T, 3, H, W]`, or [`Input::VideoFile`] (sampled, ImageNet preprocessing), to
/// `[batch, 1280]`, each clip's frame features averaged over T on the device (a matrix product
/// with `1/T`).
pub struct VideoEncoder {
    model: MobileNetV2,
    preprocess: ImagePreprocess,
}

impl VideoEncoder {
    pub fn new(model: MobileNetV2) -> VideoEncoder {
        VideoEncoder {
            model,
            preprocess: ImagePreprocess::imagenet(),
        }
    }
}

impl Encoder for VideoEncoder {
    fn device(&self) -> &Device {
        self.model.device()
    }

    fn encode(&self, input: &Input) -> Result<Tensor> {
        let sampled;
        let frames = match input {
            Input::Video(frames) => frames,
            Input::VideoFile { path, sampling } => {
                sampled = sample_video(path, *sampling, &self.preprocess)?.tensor;
                &sampled
            }
            _ => return Err(wrong_input("VideoEncoder", input)),
        };
        let (batch, t, chw) = match frames.shape().dims() {
            [t, c, h, w] => (1, *t, [*c, *h, *w]),
            [b, t, c, h, w] => (*b, *t, [*c, *h, *w]),
            dims => {
                return Err(Error::OpRank {
                    op: "VideoEncoder",
                    tensor: frames.name().to_string(),
                    shape: dims.to_vec(),
                    expected: "frames [T, 3, H, W] or [batch, T, 3, H, W]",
                })
            }
        };
        if t == 0 {
            return Err(Error::OpArgument {
                op: "VideoEncoder",
                argument: "frames",
                value: 0,
                expected: "at least one frame",
            });
        }
        let frames =
            frames
                .to_device(self.device())?
                .reshape(vec![batch * t, chw[0], chw[1], chw[2]])?;
        let features = self.model.features(&frames)?;
        let width = features.shape().dims()[1];
        let features = features.reshape(vec![batch, t, width])?;
        let mean = Tensor::from_f32("mean over frames", vec![1, t], &vec![1.0 / t as f32; t])?
            .to_device(self.device())?;
        matmul::matmul(&mean, &features, MatmulOptions::default())?.reshape(vec![batch, width])
    }
}

/// The fusion modules that join pooled features, one per modality.
pub enum Fusion {
    Early(EarlyFusion),
    Late(LateFusion),
    AttentionGate(AttentionGate),
}

impl Fusion {
    /// The outputs under the fixtures' key names: `output` (early); `fused_logits`, `probs`
    /// (late); `output`, `modality_weights` (attention-gated).
    pub fn forward(&self, features: &[&Tensor]) -> Result<Vec<(&'static str, Tensor)>> {
        Ok(match self {
            Fusion::Early(m) => vec![("output", m.forward(features)?)],
            Fusion::Late(m) => {
                let o = m.forward(features)?;
                vec![("fused_logits", o.fused_logits), ("probs", o.probs)]
            }
            Fusion::AttentionGate(m) => {
                let o = m.forward(features)?;
                vec![
                    ("output", o.output),
                    ("modality_weights", o.modality_weights),
                ]
            }
        })
    }
}

/// What [`MultiModal::run`] returns: each modality's features (on its encoder's device) and
/// the fusion's outputs (on the fusion's device).
pub struct Outputs {
    pub features: Vec<(Modality, Tensor)>,
    pub fused: Vec<(&'static str, Tensor)>,
}

impl Outputs {
    /// The fusion output named `name` (`output`, `probs`, ...).
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.fused.iter().find(|(n, _)| *n == name).map(|(_, t)| t)
    }
}

/// Encoders by modality and a fusion module on a device.
pub struct MultiModal {
    encoders: Vec<(Modality, Box<dyn Encoder>)>,
    fusion: Fusion,
    device: Device,
}

impl MultiModal {
    /// A pipeline whose fusion module's weights are on `device`.
    pub fn new(fusion: Fusion, device: Device) -> MultiModal {
        MultiModal {
            encoders: Vec::new(),
            fusion,
            device,
        }
    }

    /// Add the encoder of `modality`; the fusion module takes the modalities in the order they
    /// are added.
    pub fn encoder(mut self, modality: Modality, encoder: impl Encoder + 'static) -> MultiModal {
        self.encoders.push((modality, Box::new(encoder)));
        self
    }

    /// The modalities in fusion order.
    pub fn modalities(&self) -> Vec<Modality> {
        self.encoders.iter().map(|(m, _)| *m).collect()
    }

    /// Encode each input with its modality's encoder, move features to the fusion's device where
    /// it is another, and fuse. Errors: a modality without input, an input without encoder, or
    /// one given twice ([`Error::BadModel`] naming the modality), and the encoders' and fusion's
    /// errors.
    pub fn run(&self, mut inputs: Vec<(Modality, Input)>) -> Result<Outputs> {
        let bad = |reason: String| Error::BadModel {
            path: PathBuf::from("MultiModal"),
            reason,
        };
        let mut features = Vec::with_capacity(self.encoders.len());
        for (modality, encoder) in &self.encoders {
            let at = inputs.iter().position(|(m, _)| m == modality);
            let Some(at) = at else {
                return Err(bad(format!("no {modality} input")));
            };
            let (_, input) = inputs.swap_remove(at);
            features.push((*modality, encoder.encode(&input)?));
        }
        if let Some((m, _)) = inputs.first() {
            return Err(bad(format!(
                "a {m} input without an encoder, or given twice"
            )));
        }
        let moved: Vec<Option<Tensor>> = features
            .iter()
            .map(|(_, f)| {
                if f.device().same_as(&self.device) {
                    Ok(None)
                } else {
                    f.to_device(&self.device).map(Some)
                }
            })
            .collect::<Result<_>>()?;
        let on_device: Vec<&Tensor> = features
            .iter()
            .zip(&moved)
            .map(|((_, f), m)| m.as_ref().unwrap_or(f))
            .collect();
        let fused = self.fusion.forward(&on_device)?;
        Ok(Outputs { features, fused })
    }
}
