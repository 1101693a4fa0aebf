//! Crash tests: a child process is SIGKILLed while it writes, and what it leaves behind must
//! always be either the complete old state or the complete new one.
//!
//! How: the test binary re-executes itself (`current_exe() --exact child --ignored`) with the job
//! in `MLMF_KILL_TEST_JOB`; the ignored test `child` runs it. The child streams its tensor
//! through a [`ChunkSource`] that sleeps between 256 KiB chunks, so a save takes tens of
//! milliseconds and a kill can land mid-tensor, and it reports progress on stderr
//! (`mlmf-kill started`, `chunk N`, `last-chunk`, `done`). The parent kills it with
//! `Child::kill` (SIGKILL: no destructor, no cleanup) after a seeded random delay, either from the
//! start of the write or from the last chunk (to land in the flush / fsync / rename / fsync
//! sequence), then checks the files from outside. `MLMF_KILL_SEED` replays another seed.
//!
//! Points inside the commit sequence are hit two ways:
//! - inside [`AtomicFile::commit`](mlmf::checkpoint::AtomicFile) (flush, fsync, rename, fsync
//!   of the directory) by random delays after the last chunk, spread over the time that sequence
//!   took in calibration runs; we count which side of the rename each kill landed on. No hook is
//!   added to `AtomicFile`: a SIGKILL cannot interrupt a system call half-way, so the states a
//!   kill can leave are the ones between calls, and the rename is the only call that changes
//!   what the target path holds.
//! - in the manager's directory sequence (model written, manifest written, rename, parent
//!   fsync, `latest` replaced, and prune's rename-then-delete) exactly, through a debug-build hook
//!   in `src/checkpoint/manager/disk.rs`: when `MLMF_CHECKPOINT_PAUSE_AT` names a point the child
//!   announces it and waits, and the parent kills it there. Release builds compile the hook out,
//!   so that test is ignored there.
//!
//! What a kill cannot show is a power cut (data written but not yet on disk); the fsyncs are
//! there for that and are not tested here.
//!
//! Disk full is simulated with RLIMIT_FSIZE (`ulimit -f` in a `sh` that then execs the child,
//! with SIGXFSZ ignored so that the write fails with EFBIG instead of killing the process): it
//! works without privileges, unlike mounting a small tmpfs (which works as root here but not in
//! every container).

#![cfg(target_os = "linux")]

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use mlmf::checkpoint::{
    step_name, CheckpointManager, ChunkSource, Retention, SafetensorsWriter, TensorSource, Verify,
};
use mlmf::{DType, Error, ModelFile};

const JOB: &str = "MLMF_KILL_TEST_JOB";
const PAUSE: &str = "MLMF_CHECKPOINT_PAUSE_AT";
const MARK: &str = "mlmf-kill ";
const CHUNK: usize = 256 << 10;
const CHUNKS: usize = 16;
const SLEEP: Duration = Duration::from_millis(3);
/// Any wait for the child longer than this is a failure, not a skip.
const PATIENCE: Duration = Duration::from_secs(30);

// ---- the child ------------------------------------------------------------------------------

/// Not a test on its own: the process the other tests start and kill. Without the job variable
/// (a plain `cargo test -- --ignored`) it has nothing to do.
#[test]
#[ignore = "child process of the kill tests"]
fn child() {
    let Ok(job) = std::env::var(JOB) else { return };
    let args: Vec<&str> = job.split('\n').collect();
    say("started");
    match args.as_slice() {
        ["atomic", target, step] => {
            let slow = Slow::new(step.parse().unwrap(), CHUNKS);
            tensor_writer(&slow).write(target).unwrap();
        }
        ["save", dir, step] => {
            let step: u64 = step.parse().unwrap();
            let mut m = CheckpointManager::open(dir).unwrap();
            let slow = Slow::new(step, CHUNKS);
            save(&mut m, step, TensorSource::Chunks(&slow)).unwrap();
        }
        ["prune", dir] => {
            let mut m = CheckpointManager::open(dir).unwrap();
            m.prune(&Retention {
                keep_last: Some(1),
                ..Default::default()
            })
            .unwrap();
        }
        ["full-atomic", target] => {
            let payload = payload(2, CHUNK * 4);
            let mut w = SafetensorsWriter::new(BTreeMap::new());
            w.add_tensor("w", DType::U8, &[payload.len()], &payload);
            report_error(w.write(target));
        }
        ["full-save", dir] => {
            let mut m = CheckpointManager::open(dir).unwrap();
            let payload = payload(2, CHUNK * 4);
            report_error(save(&mut m, 2, TensorSource::Bytes(&payload)).map(|_| ()));
        }
        _ => panic!("unknown job {job:?}"),
    }
    say("done");
}

fn say(what: &str) {
    eprintln!("{MARK}{what}");
}

/// Report a write's error on stderr for the parent: `error io ERRNO | message` for I/O errors.
fn report_error(result: mlmf::Result<()>) {
    match result {
        Ok(()) => say("error none"),
        Err(e) => match &e {
            Error::Io { source, .. } => say(&format!(
                "error io {} | {e}",
                source.raw_os_error().unwrap_or(-1)
            )),
            _ => say(&format!("error other | {e}")),
        },
    }
}

/// `chunks` chunks of deterministic bytes for `step`, with a pause after each.
struct Slow {
    step: u64,
    chunks: usize,
}

impl Slow {
    fn new(step: u64, chunks: usize) -> Slow {
        Slow { step, chunks }
    }
}

impl ChunkSource for Slow {
    fn byte_len(&self) -> u64 {
        (self.chunks * CHUNK) as u64
    }

    fn for_each_chunk(&self, f: &mut dyn FnMut(&[u8]) -> mlmf::Result<()>) -> mlmf::Result<()> {
        let mut chunk = vec![0u8; CHUNK];
        for i in 0..self.chunks {
            fill(&mut chunk, self.step, (i * CHUNK) as u64);
            f(&chunk)?;
            say(&format!("chunk {}", i + 1));
            if i + 1 < self.chunks {
                std::thread::sleep(SLEEP);
            }
        }
        say("last-chunk");
        Ok(())
    }
}

/// The bytes of `step`'s tensor from byte `offset` on.
fn fill(out: &mut [u8], step: u64, offset: u64) {
    for (i, b) in (offset..).zip(out.iter_mut()) {
        *b = (i.wrapping_mul(131) ^ (i >> 12) ^ step.wrapping_mul(0x9e)) as u8;
    }
}

fn payload(step: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    fill(&mut out, step, 0);
    out
}

fn tensor_writer<'a>(source: &'a Slow) -> SafetensorsWriter<'a> {
    let mut w = SafetensorsWriter::new(BTreeMap::new());
    w.add_tensor(
        "w",
        DType::U8,
        &[source.byte_len() as usize],
        TensorSource::Chunks(source),
    );
    w
}

fn save(
    m: &mut CheckpointManager,
    step: u64,
    source: TensorSource<'_>,
) -> mlmf::Result<mlmf::checkpoint::CheckpointInfo> {
    let len = source.byte_len() as usize;
    m.save(
        step,
        [("w", DType::U8, &[len][..], source)],
        &BTreeMap::from([("step".to_string(), step.to_string())]),
        &BTreeMap::from([("loss".to_string(), 1.0 / (step as f64 + 1.0))]),
    )
}

// ---- the parent -------------------------------------------------------------------------------

/// A started child and its stderr lines, each with the time it arrived.
struct Run {
    child: Child,
    lines: Receiver<(Instant, String)>,
    seen: Vec<String>,
}

impl Run {
    fn start(job: &[String], pause_at: Option<&str>, fsize_blocks: Option<u32>) -> Run {
        let exe = std::env::current_exe().unwrap();
        let harness = [
            "--exact",
            "child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ];
        let mut cmd = match fsize_blocks {
            None => {
                let mut c = Command::new(&exe);
                c.args(harness);
                c
            }
            Some(blocks) => {
                // SIGXFSZ ignored survives exec, so the limit shows as EFBIG from write().
                let mut c = Command::new("/bin/sh");
                c.arg("-c")
                    .arg(format!(
                        "trap '' XFSZ; ulimit -f {blocks} && exec \"$0\" \"$@\""
                    ))
                    .arg(&exe)
                    .args(harness);
                c
            }
        };
        cmd.env(JOB, job.join("\n"))
            .env_remove(PAUSE)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(point) = pause_at {
            cmd.env(PAUSE, point);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Run {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Wait for a stderr line starting with `prefix`; fail the test if the child ends first.
    fn wait_for(&mut self, prefix: &str) -> Instant {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) => {
                    let hit = line.starts_with(prefix);
                    self.seen.push(line);
                    if hit {
                        return at;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "child never printed {prefix:?}; its stderr:\n{}",
                        self.seen.join("\n")
                    );
                }
            }
        }
    }

    /// SIGKILL (if it still runs) and reap; true when the kill is what ended it.
    fn kill(mut self) -> (bool, Vec<String>) {
        let _ = self.child.kill();
        let status = self.child.wait().unwrap();
        self.seen.extend(self.lines.try_iter().map(|(_, l)| l));
        // The reader thread may still hold lines; it ends once the pipe closes.
        std::thread::sleep(Duration::from_millis(1));
        self.seen.extend(self.lines.try_iter().map(|(_, l)| l));
        (status.signal() == Some(9), self.seen)
    }

    /// Let the child finish; fail the test unless it exits cleanly.
    fn finish(mut self) -> Vec<String> {
        let status = self.child.wait().unwrap();
        for (_, line) in self.lines.iter() {
            self.seen.push(line);
        }
        assert!(
            status.success(),
            "child failed ({status}):\n{}",
            self.seen.join("\n")
        );
        self.seen
    }
}

/// SplitMix64: a seeded generator, so a failing sequence of kill delays can be replayed.
struct Rng(u64);

impl Rng {
    fn from_env() -> Rng {
        let seed = std::env::var("MLMF_KILL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x6d6c_6d66);
        eprintln!("kill delays from seed {seed} (MLMF_KILL_SEED replays it)");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, max].
    fn delay(&mut self, max: Duration) -> Duration {
        let micros = max.as_micros().max(1) as u64;
        Duration::from_micros(self.next() % (micros + 1))
    }
}

/// Durations of uncontrolled runs of the jobs `prepare` makes (each checked by `check`): first
/// to last chunk (the write) and last chunk to done (the commit sequence), each the shortest of
/// three runs, so that delays drawn below them land inside the phase.
fn calibrate(
    mut prepare: impl FnMut(usize) -> Vec<String>,
    mut check: impl FnMut(usize),
) -> (Duration, Duration) {
    let mut best = (Duration::MAX, Duration::MAX);
    for i in 0..3 {
        let mut run = Run::start(&prepare(i), None, None);
        let start = run.wait_for(&format!("{MARK}chunk 1"));
        let last = run.wait_for(&format!("{MARK}last-chunk"));
        let done = run.wait_for(&format!("{MARK}done"));
        run.finish();
        check(i);
        best = (best.0.min(last - start), best.1.min(done - last));
    }
    best
}

/// The chunk count the child reported before it died.
fn chunks_seen(lines: &[String]) -> usize {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(&format!("{MARK}chunk ")))
        .filter_map(|n| n.parse().ok())
        .max()
        .unwrap_or(0)
}

/// The bytes a complete write of `step` produces, made with an in-memory source.
fn reference_file(dir: &Path, step: u64) -> Vec<u8> {
    let path = dir.join(format!("reference-{step}.safetensors"));
    let bytes = payload(step, CHUNKS * CHUNK);
    let mut w = SafetensorsWriter::new(BTreeMap::new());
    w.add_tensor("w", DType::U8, &[bytes.len()], &bytes);
    w.write(&path).unwrap();
    let out = fs::read(&path).unwrap();
    fs::remove_file(&path).unwrap();
    out
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Where the kills of [`kill_at_random`] landed and what they left.
#[derive(Default, Debug)]
struct Tally {
    killed: usize,
    /// Runs that ended by themselves before the kill came.
    finished: usize,
    /// Kills after the first chunk and before the last was handed over.
    mid_tensor: usize,
    /// Kills after the last chunk (in the commit sequence), by what they left.
    commit_old: usize,
    commit_new: usize,
    /// All runs by what they left.
    old: usize,
    new: usize,
}

/// `runs` children from `prepare(i)`, killed at seeded random delays: even runs while the chunks
/// stream (`write`, from the first chunk), odd runs from the last chunk over the commit sequence
/// (`commit`) and a quarter past it, so that some land after the rename.
/// `judge(i)` checks what a run left and says whether the new state was committed.
fn kill_at_random(
    label: &str,
    runs: usize,
    (write, commit): (Duration, Duration),
    mut prepare: impl FnMut(usize) -> Vec<String>,
    mut judge: impl FnMut(usize) -> bool,
) -> Tally {
    let mut rng = Rng::from_env();
    let mut tally = Tally::default();
    for i in 0..runs {
        let mut run = Run::start(&prepare(i), None, None);
        let in_commit = i % 2 == 1;
        let (from, max) = if in_commit {
            (run.wait_for(&format!("{MARK}last-chunk")), commit * 5 / 4)
        } else {
            (run.wait_for(&format!("{MARK}chunk 1")), write)
        };
        std::thread::sleep((from + rng.delay(max)).saturating_duration_since(Instant::now()));
        let (killed, lines) = run.kill();
        let seen = chunks_seen(&lines);
        let new = judge(i);
        tally.killed += usize::from(killed);
        tally.finished += usize::from(!killed);
        tally.mid_tensor += usize::from(killed && seen > 0 && seen < CHUNKS);
        tally.commit_old += usize::from(killed && in_commit && !new);
        tally.commit_new += usize::from(killed && in_commit && new);
        tally.old += usize::from(!new);
        tally.new += usize::from(new);
    }
    eprintln!("{label}: {tally:?}");
    tally
}

#[test]
fn safetensors_over_an_existing_file_is_old_or_new_after_sigkill() {
    let root = tempfile::tempdir().unwrap();
    let old = reference_file(root.path(), 1);
    let new = reference_file(root.path(), 2);
    assert_ne!(old, new);
    let job = |t: &Path| vec!["atomic".to_string(), t.display().to_string(), "2".into()];
    let cal_target = |i: usize| root.path().join(format!("calibration-{i}.safetensors"));
    let phases = calibrate(
        |i| job(&cal_target(i)),
        |i| {
            assert_eq!(
                fs::read(cal_target(i)).unwrap(),
                new,
                "an uninterrupted write"
            )
        },
    );
    eprintln!(
        "calibration: chunks {:?}, then commit {:?}",
        phases.0, phases.1
    );

    let dir = |i: usize| root.path().join(format!("run-{i}"));
    let tally = kill_at_random(
        "single file",
        40,
        phases,
        |i| {
            fs::create_dir(dir(i)).unwrap();
            let target = dir(i).join("model.safetensors");
            fs::write(&target, &old).unwrap();
            job(&target)
        },
        |i| {
            let target = dir(i).join("model.safetensors");
            // At worst AtomicFile's temporary file remains beside the target.
            for name in names(&dir(i)) {
                assert!(
                    name == "model.safetensors" || name.starts_with(".model.safetensors.tmp-"),
                    "run {i}: unexpected {name}"
                );
            }
            let found = fs::read(&target).unwrap();
            if found == new {
                ModelFile::open(&target).unwrap();
                return true;
            }
            assert!(
                found == old,
                "run {i}: the target is neither the old nor the new file ({} bytes)",
                found.len()
            );
            false
        },
    );
    assert!(
        tally.mid_tensor >= 10,
        "too few kills mid-tensor: {tally:?}"
    );
    // Which side of the rename the commit-sequence kills land on depends on timing; both are
    // checked above whenever they happen, and the tally is printed.
    assert!(
        tally.commit_old + tally.commit_new >= 6,
        "too few kills in the commit sequence: {tally:?}"
    );
}

/// Check a checkpoint directory after a killed save of step 2 over step 1; returns whether
/// step 2 was committed.
fn check_after_killed_save(dir: &Path, expected: &BTreeMap<u64, Vec<u8>>, run: &str) -> bool {
    // From outside, before any manager repairs anything: `latest` names a complete checkpoint.
    let pointer = fs::read_to_string(dir.join("latest")).unwrap();
    let has2 = dir.join(step_name(2)).is_dir();
    assert!(
        pointer == "step-00000001\n" || (pointer == "step-00000002\n" && has2),
        "{run}: latest is {pointer:?}, step 2 exists: {has2}"
    );
    // The lock died with the child.
    let m = CheckpointManager::open(dir).unwrap();
    let entries = m.list(Verify::Hashes).unwrap();
    let steps: Vec<u64> = entries.iter().map(|e| e.step).collect();
    assert!(
        steps == [1] || steps == [1, 2],
        "{run}: checkpoints {steps:?}"
    );
    for e in &entries {
        assert!(e.is_valid(), "{run}: {e:?}");
    }
    let resume = m.resume().unwrap();
    assert!(resume.skipped.is_empty(), "{run}: {:?}", resume.skipped);
    let newest = *steps.last().unwrap();
    assert_eq!(resume.checkpoint.unwrap().step, newest, "{run}");
    assert_eq!(
        m.latest().unwrap(),
        Some(newest),
        "{run}: open repairs latest"
    );
    for &step in &steps {
        let file = m.load(step).unwrap();
        assert_eq!(
            file.bytes(file.tensor("w").unwrap()),
            expected[&step],
            "{run}: step {step}"
        );
    }
    for name in names(dir) {
        assert!(
            !name.starts_with(".mlmf-tmp-") && !name.starts_with(".latest.tmp-"),
            "{run}: open left {name}"
        );
    }
    newest == 2
}

/// A directory with checkpoint 1 saved by this process.
fn dir_with_step_1(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    let mut m = CheckpointManager::open(&dir).unwrap();
    let bytes = payload(1, CHUNKS * CHUNK);
    save(&mut m, 1, TensorSource::Bytes(&bytes)).unwrap();
    dir
}

fn expected_payloads() -> BTreeMap<u64, Vec<u8>> {
    (1..=5).map(|s| (s, payload(s, CHUNKS * CHUNK))).collect()
}

#[test]
fn checkpoint_save_killed_at_random_points_leaves_the_previous_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let expected = expected_payloads();
    let job = |d: &Path| vec!["save".to_string(), d.display().to_string(), "2".into()];
    let dir = |name: String| root.path().join(name);
    let phases = calibrate(
        |i| job(&dir_with_step_1(root.path(), &format!("calibration-{i}"))),
        |i| {
            let d = dir(format!("calibration-{i}"));
            assert!(check_after_killed_save(&d, &expected, "calibration"));
        },
    );
    eprintln!(
        "calibration: chunks {:?}, then hash, manifest, renames {:?}",
        phases.0, phases.1
    );
    let tally = kill_at_random(
        "checkpoint save",
        40,
        phases,
        |i| job(&dir_with_step_1(root.path(), &format!("run-{i}"))),
        |i| {
            let d = dir(format!("run-{i}"));
            let committed = check_after_killed_save(&d, &expected, &format!("run {i}"));
            fs::remove_dir_all(&d).unwrap();
            committed
        },
    );
    assert!(
        tally.mid_tensor >= 10,
        "too few kills mid-tensor: {tally:?}"
    );
    // Which side of the rename the commit-sequence kills land on depends on timing; both are
    // checked above whenever they happen, and the tally is printed.
    assert!(
        tally.commit_old + tally.commit_new >= 6,
        "too few kills in the commit sequence: {tally:?}"
    );
}

#[cfg_attr(
    not(debug_assertions),
    ignore = "the pause hook in checkpoint::manager exists in debug builds only"
)]
#[test]
fn checkpoint_save_killed_at_each_step_of_the_commit_sequence() {
    let root = tempfile::tempdir().unwrap();
    let expected = expected_payloads();
    // (pause point, whether step 2 is committed, what `latest` says before a manager opens)
    let points = [
        ("save-after-model", false, "step-00000001\n"),
        ("save-before-rename", false, "step-00000001\n"),
        ("save-after-rename", true, "step-00000001\n"),
        ("save-before-latest", true, "step-00000001\n"),
        ("save-after-latest", true, "step-00000002\n"),
    ];
    for (point, committed, pointer) in points {
        let dir = dir_with_step_1(root.path(), point);
        let job = ["save".to_string(), dir.display().to_string(), "2".into()];
        let mut run = Run::start(&job, Some(point), None);
        run.wait_for(&format!("mlmf-pause-point {point}"));
        let (killed, _) = run.kill();
        assert!(killed, "{point}");
        assert_eq!(
            fs::read_to_string(dir.join("latest")).unwrap(),
            pointer,
            "{point}"
        );
        let leftovers = names(&dir)
            .into_iter()
            .filter(|n| n.starts_with(".mlmf-tmp-save-"))
            .count();
        assert_eq!(
            leftovers,
            usize::from(!committed),
            "{point}: {:?}",
            names(&dir)
        );
        assert_eq!(
            check_after_killed_save(&dir, &expected, point),
            committed,
            "{point}"
        );
    }

    // Prune renames a checkpoint away before deleting it: killed in between, the checkpoint is
    // gone as a whole and the next open removes the rest.
    let dir = dir_with_step_1(root.path(), "prune");
    {
        let mut m = CheckpointManager::open(&dir).unwrap();
        for step in 2..=3 {
            save(&mut m, step, TensorSource::Bytes(&expected[&step])).unwrap();
        }
    }
    let job = ["prune".to_string(), dir.display().to_string()];
    let mut run = Run::start(&job, Some("delete-after-rename"), None);
    run.wait_for("mlmf-pause-point delete-after-rename");
    assert!(run.kill().0);
    let left = names(&dir);
    assert!(
        !left.contains(&step_name(1))
            && left
                .iter()
                .any(|n| n.starts_with(".mlmf-tmp-delete-step-00000001-")),
        "{left:?}"
    );
    let m = CheckpointManager::open(&dir).unwrap();
    assert_eq!(m.cleaned().len(), 1);
    let steps: Vec<u64> = m
        .list(Verify::Hashes)
        .unwrap()
        .iter()
        .map(|e| e.step)
        .collect();
    assert_eq!(steps, [2, 3]);
    assert_eq!(m.resume().unwrap().checkpoint.unwrap().step, 3);
}

#[test]
fn prune_killed_at_random_points_keeps_the_newest_valid_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let expected = expected_payloads();
    let mut rng = Rng::from_env();
    let make = |name: &str| {
        let dir = dir_with_step_1(root.path(), name);
        let mut m = CheckpointManager::open(&dir).unwrap();
        for step in 2..=5 {
            save(&mut m, step, TensorSource::Bytes(&expected[&step])).unwrap();
        }
        dir
    };
    let cal = make("calibration");
    let job = |d: &Path| ["prune".to_string(), d.display().to_string()];
    let mut run = Run::start(&job(&cal), None, None);
    let start = run.wait_for(&format!("{MARK}started"));
    let total = run.wait_for(&format!("{MARK}done")) - start;
    run.finish();
    let left = CheckpointManager::open_read_only(&cal).unwrap();
    let steps: Vec<u64> = left
        .list(Verify::Sizes)
        .unwrap()
        .iter()
        .map(|e| e.step)
        .collect();
    assert_eq!(steps, [5], "an uninterrupted prune with keep_last 1");
    eprintln!("calibration: prune {total:?}");
    let mut killed_mid = 0;
    for i in 0..15 {
        let dir = make(&format!("run-{i}"));
        let job = job(&dir);
        let mut run = Run::start(&job, None, None);
        let from = run.wait_for(&format!("{MARK}started"));
        std::thread::sleep((from + rng.delay(total)).saturating_duration_since(Instant::now()));
        run.kill();
        let m = CheckpointManager::open(&dir).unwrap();
        let entries = m.list(Verify::Hashes).unwrap();
        let steps: Vec<u64> = entries.iter().map(|e| e.step).collect();
        assert!(entries.iter().all(|e| e.is_valid()), "run {i}: {entries:?}");
        assert_eq!(steps.last(), Some(&5), "run {i}: {steps:?}");
        // Deleted oldest first, each checkpoint as a whole: what is left is 1..=5 minus a prefix.
        assert!(
            steps.windows(2).all(|w| w[1] == w[0] + 1),
            "run {i}: {steps:?}"
        );
        killed_mid += usize::from(steps.len() > 1 && steps.len() < 5);
        let file = m.load(5).unwrap();
        assert_eq!(file.bytes(file.tensor("w").unwrap()), expected[&5]);
    }
    eprintln!("prune: {killed_mid} of 15 kills left part of the old checkpoints");
}

#[test]
fn disk_full_is_a_clear_error_and_leaves_the_previous_file() {
    let root = tempfile::tempdir().unwrap();
    // 1 MiB to write under a limit of 256 blocks (128 or 256 KiB, as sh counts them).
    let blocks = 256;

    let target = root.path().join("model.safetensors");
    let old = reference_file(root.path(), 1);
    fs::write(&target, &old).unwrap();
    let job = ["full-atomic".to_string(), target.display().to_string()];
    let lines = Run::start(&job, None, Some(blocks)).finish();
    let error = lines
        .iter()
        .find_map(|l| l.strip_prefix(&format!("{MARK}error ")))
        .unwrap_or_else(|| panic!("no error reported:\n{}", lines.join("\n")));
    eprintln!("disk full, single file: {error}");
    assert!(error.starts_with("io 27 "), "EFBIG expected: {error}");
    assert!(error.contains("File too large"), "{error}");
    assert_eq!(
        fs::read(&target).unwrap(),
        old,
        "the previous file is intact"
    );
    assert_eq!(
        names(root.path()),
        ["model.safetensors"],
        "temporary file removed"
    );

    let dir = dir_with_step_1(root.path(), "checkpoints");
    let before = names(&dir);
    let job = ["full-save".to_string(), dir.display().to_string()];
    let lines = Run::start(&job, None, Some(blocks)).finish();
    let error = lines
        .iter()
        .find_map(|l| l.strip_prefix(&format!("{MARK}error ")))
        .unwrap_or_else(|| panic!("no error reported:\n{}", lines.join("\n")));
    eprintln!("disk full, checkpoint: {error}");
    assert!(error.starts_with("io 27 "), "EFBIG expected: {error}");
    assert!(error.contains(".mlmf-tmp-save-step-00000002-"), "{error}");
    assert_eq!(
        names(&dir),
        before,
        "temporary directory removed, no step 2"
    );
    let m = CheckpointManager::open(&dir).unwrap();
    assert!(m.cleaned().is_empty(), "the failed save cleaned up itself");
    assert_eq!(m.resume().unwrap().checkpoint.unwrap().step, 1);
    let file = m.load(1).unwrap();
    assert_eq!(
        file.bytes(file.tensor("w").unwrap()),
        payload(1, CHUNKS * CHUNK)
    );
}
