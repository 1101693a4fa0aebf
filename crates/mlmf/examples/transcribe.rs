//! Speech to text with Whisper tiny.en: load the CTranslate2 model directory, transcribe one
//! audio file (WAV, FLAC, MP3 or Ogg Vorbis, any length), print the text and the real-time factor
//! (seconds of compute per second of audio).
//!
//! `cargo run --release --example transcribe -- AUDIO [MODEL_DIR]` (default: the cached
//! whisper-tiny.en-ct2 that `scripts/fetch_models.py` fetches).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use mlmf::models::whisper::{self, TranscribeOptions, Whisper};
use mlmf::Device;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let Some(audio) = args.next() else {
        eprintln!("usage: transcribe AUDIO [MODEL_DIR]");
        return ExitCode::FAILURE;
    };
    let dir = args
        .next()
        .unwrap_or_else(|| whisper::tiny_en_dir(&mlmf::models::cache_dir()));
    match run(&audio, &dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(audio: &Path, dir: &Path) -> mlmf::Result<()> {
    let model = Whisper::load(dir, &Device::gpu()?)?;
    let start = Instant::now();
    let transcript = model.transcribe_file(audio, &TranscribeOptions::default())?;
    let seconds = start.elapsed().as_secs_f64();

    println!("{}", transcript.text);
    println!(
        "{:.2} s of audio in {seconds:.2} s: real-time factor {:.3}",
        transcript.audio_seconds,
        seconds / transcript.audio_seconds
    );
    Ok(())
}
