//! Inputs other than tensors: turning photos and text into the tensors a model takes, and turning
//! its outputs back into something a person reads.

pub mod audio;
pub mod labels;
pub mod pipeline;
pub mod preprocess;
pub mod resample;
pub mod search;
pub mod video;

pub use audio::{decode_audio, Audio};
pub use labels::{imagenet_labels, imagenet_labels_from_file, top_k, Class};
pub use pipeline::{Encoder, Input, Modality, MultiModal};
pub use preprocess::image::{Filter, ImagePreprocess};
pub use preprocess::text::TextTokenizer;
pub use resample::resample;
pub use video::{open_video, Frame, FrameSource, VideoInfo};
