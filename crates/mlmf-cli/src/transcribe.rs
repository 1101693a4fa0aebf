//! `mlmf transcribe`: speech to text with Whisper tiny.en from a CTranslate2 model directory, one
//! line (or one JSON object) per audio file, and the last decoder layer's cross-attention drawn
//! as a heatmap.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use mlmf::fusion::heatmap::{self, HeatmapOptions};
use mlmf::models::whisper::{self, CrossAttention, TranscribeOptions, Whisper};

use crate::{device, json_line, CliError, DeviceArg, Result};

/// Whisper's encoder gives 50 frames a second (hop 160 at 16 kHz, then the stride-2 conv).
const FRAMES_PER_SECOND: usize = 50;
/// Encoder frames summed into one heatmap column (0.2 s): one-pixel columns could carry no
/// labels, and a row must be a glyph (8 px) tall for its token to be read, so a cell of 8 px per
/// frame would make a 30 s window 12000 px wide. A sum keeps each row's attention mass.
const FRAMES_PER_COLUMN: usize = 10;
/// Pixels per heatmap cell: the bitmap font's glyph size, so each token label fits its row.
const CELL: u32 = 8;

/// One audio file's result.
struct FileResult {
    path: PathBuf,
    text: String,
    tokens: Vec<u32>,
    audio_seconds: f64,
    seconds: f64,
}

/// `mlmf transcribe`: `model` (default: the cached tiny.en directory) on `device_arg`, each
/// file of `audio` in order. Text: the transcript, after `PATH: ` when there are several files.
/// `json`: one list of `{"audio", "text", "tokens", "audio_seconds", "seconds"}`, `seconds` the
/// wall time of that file's `transcribe_file` (decoding the file included, loading the model
/// not). `attention_png`: the heatmap of the one file's cross-attention.
pub(crate) fn transcribe(
    model: Option<PathBuf>,
    device_arg: DeviceArg,
    json: bool,
    attention_png: Option<&Path>,
    audio: &[PathBuf],
    out: &mut dyn Write,
) -> Result<()> {
    // One OUT cannot name several pictures, and inventing names beside it could overwrite the
    // user's files: refused before the model is loaded.
    if attention_png.is_some() && audio.len() != 1 {
        return Err(CliError::Usage(format!(
            "--attention-png writes the picture of one audio file; {} were given (run once per file)",
            audio.len()
        )));
    }
    let dir = model.unwrap_or_else(|| whisper::tiny_en_dir(&mlmf::models::cache_dir()));
    let model = Whisper::load(&dir, &device(device_arg)?)?;
    let options = TranscribeOptions {
        attention: attention_png.is_some(),
    };
    let mut results = Vec::with_capacity(audio.len());
    for path in audio {
        let start = Instant::now();
        let transcript = model.transcribe_file(path, &options)?;
        let seconds = start.elapsed().as_secs_f64();
        if let Some(png) = attention_png {
            let attention = transcript.attention.as_ref().ok_or_else(|| {
                CliError::Usage(format!(
                    "{}: the model returned no cross-attention",
                    path.display()
                ))
            })?;
            let (rows, columns) = write_attention(png, attention)?;
            let _ = writeln!(
                io::stderr(),
                "cross-attention of {}: {rows} tokens x {columns} columns of {} s -> {}",
                path.display(),
                FRAMES_PER_COLUMN as f64 / FRAMES_PER_SECOND as f64,
                png.display()
            );
        }
        if !json {
            // Printed as each file is done, so a long list shows progress.
            if audio.len() > 1 {
                outln!(out, "{}: {}", path.display(), transcript.text);
            } else {
                outln!(out, "{}", transcript.text);
            }
        }
        results.push(FileResult {
            path: path.clone(),
            text: transcript.text,
            tokens: transcript.tokens,
            audio_seconds: transcript.audio_seconds,
            seconds,
        });
    }
    if json {
        let list: Vec<serde_json::Value> = results
            .iter()
            .map(|r| {
                serde_json::json!({
                    "audio": r.path.display().to_string(),
                    "text": r.text,
                    "tokens": r.tokens,
                    "audio_seconds": r.audio_seconds,
                    "seconds": r.seconds,
                })
            })
            .collect();
        json_line(out, &serde_json::Value::Array(list), false)?;
    }
    Ok(())
}

/// The cross-attention `[rows, frames]` summed over every [`FRAMES_PER_COLUMN`] frames (the last
/// column may hold fewer): `(values, columns)`.
fn pool(a: &CrossAttention) -> Result<(Vec<f32>, usize)> {
    if a.rows.checked_mul(a.frames) != Some(a.values.len()) {
        return Err(mlmf::Error::ShapeMismatch {
            op: "transcribe --attention-png",
            left: "cross-attention values".to_string(),
            left_shape: vec![a.values.len()],
            right: "rows x frames".to_string(),
            right_shape: vec![a.rows, a.frames],
        }
        .into());
    }
    let columns = a.frames.div_ceil(FRAMES_PER_COLUMN);
    let mut pooled = vec![0.0f32; a.rows * columns];
    for (r, row) in a.values.chunks_exact(a.frames.max(1)).enumerate() {
        for (f, v) in row.iter().enumerate() {
            pooled[r * columns + f / FRAMES_PER_COLUMN] += v;
        }
    }
    Ok((pooled, columns))
}

/// The heatmap of `a` written to `png` (see `mlmf::fusion::heatmap`): one row per token, labelled
/// with it, one column per 0.2 s of audio (time from the start of the token's 30 s window; the
/// library keeps the frames that hold audio), labelled every second. Returns `(rows, columns)`.
fn write_attention(png: &Path, a: &CrossAttention) -> Result<(usize, usize)> {
    let (values, columns) = pool(a)?;
    let per_label = FRAMES_PER_SECOND / FRAMES_PER_COLUMN;
    let column_labels: Vec<String> = (0..columns)
        .map(|c| {
            if c.is_multiple_of(per_label) {
                format!("{}s", c / per_label)
            } else {
                String::new()
            }
        })
        .collect();
    let options = HeatmapOptions {
        cell: CELL,
        ..HeatmapOptions::default()
    };
    heatmap::write_png(
        png,
        &values,
        (a.rows, columns),
        &a.labels,
        &column_labels,
        &options,
    )?;
    Ok((a.rows, columns))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Columns sum 10 frames each, the last the 5 that are left; rows stay apart.
    #[test]
    fn pool_sums_ten_frames_per_column() {
        let frames = 25;
        let values: Vec<f32> = (0..2 * frames).map(|i| i as f32).collect();
        let a = CrossAttention {
            rows: 2,
            frames,
            values,
            labels: vec!["a".into(), "b".into()],
        };
        let (pooled, columns) = pool(&a).unwrap();
        assert_eq!(columns, 3);
        // Row 0: 0..=9, 10..=19, 20..=24; row 1: the same plus 25 each.
        assert_eq!(pooled, [45.0, 145.0, 110.0, 295.0, 395.0, 235.0]);
        let short = CrossAttention {
            values: vec![0.0; 49],
            ..a
        };
        assert!(pool(&short).is_err());
    }
}
