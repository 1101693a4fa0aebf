//! `mlmf audio` and `mlmf mel`: decoded samples and Whisper's log-mel spectrogram of an audio
//! file, written as safetensors.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use mlmf::checkpoint::SafetensorsWriter;
use mlmf::multimodal::{decode_audio, resample};
use mlmf::ops::mel::{self, Windowing};
use mlmf::DType;

use crate::{device, CliError, DeviceArg, Result};

/// The f32 values as little-endian bytes, the layout safetensors stores.
fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// `mlmf audio`: the samples of `input` (each channel, or their mean with `mono`), resampled to
/// `rate` when given, as `samples` F32 `[channels, n]` with metadata `sample_rate`.
pub(crate) fn audio(
    input: &Path,
    rate: Option<u32>,
    mono: bool,
    output: &Path,
    out: &mut dyn Write,
) -> Result<()> {
    let audio = decode_audio(input)?;
    let channels = if mono {
        vec![audio.mono()]
    } else {
        audio.channels.clone()
    };
    let to = rate.unwrap_or(audio.sample_rate);
    let channels = channels
        .iter()
        .map(|c| resample(c, audio.sample_rate, to))
        .collect::<Result<Vec<_>, _>>()?;
    let n = channels.first().map_or(0, Vec::len);
    let bytes: Vec<u8> = channels.iter().flat_map(|c| le_bytes(c)).collect();
    let metadata = BTreeMap::from([("sample_rate".to_string(), to.to_string())]);
    let mut writer = SafetensorsWriter::new(metadata);
    writer.add_tensor("samples", DType::F32, &[channels.len(), n], &bytes);
    writer.write(output)?;
    outln!(
        out,
        "{}: {} channel(s) x {n} samples at {to} Hz ({:.3} s) -> {}",
        input.display(),
        channels.len(),
        n as f64 / f64::from(to),
        output.display()
    );
    Ok(())
}

/// `mlmf mel`: Whisper's log-mel spectrogram of `input` (mixed to mono, resampled to 16 kHz) as
/// `mel` F32 `[mels, 3000]` for one 30 s window, `[windows, mels, 3000]` for more.
pub(crate) fn log_mel(
    input: &Path,
    mels: usize,
    windowing: Windowing,
    device_arg: DeviceArg,
    output: &Path,
    out: &mut dyn Write,
) -> Result<()> {
    if mels != 80 && mels != 128 {
        return Err(CliError::Usage(format!(
            "--mels {mels}: Whisper's models take 80 or 128 bands"
        )));
    }
    let device = device(device_arg)?;
    let audio = decode_audio(input)?;
    let samples = resample(&audio.mono(), audio.sample_rate, mel::SAMPLE_RATE)?;
    let spectrogram = mel::log_mel_with(&samples, mels, windowing, &device)?;
    let windows = spectrogram.shape().dims()[0];
    let shape = if windows == 1 {
        vec![mels, mel::FRAMES]
    } else {
        vec![windows, mels, mel::FRAMES]
    };
    let name = match windowing {
        Windowing::PerWindow => "per-window",
        Windowing::Continuous => "continuous",
    };
    let metadata = BTreeMap::from([("windowing".to_string(), name.to_string())]);
    let mut writer = SafetensorsWriter::new(metadata);
    writer.add_tensor("mel", DType::F32, &shape, &spectrogram);
    writer.write(output)?;
    outln!(
        out,
        "{}: {} s at 16 kHz, {windows} window(s) of {mels} x {} ({name}, {}) -> {}",
        input.display(),
        samples.len() as f64 / f64::from(mel::SAMPLE_RATE),
        mel::FRAMES,
        device.describe(),
        output.display()
    );
    Ok(())
}
