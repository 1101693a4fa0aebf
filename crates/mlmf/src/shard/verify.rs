//! Checking that every device or rank holds the bytes the file says.
//!
//! Each rank hashes (sha256) the parts it loaded, read back from its device, so a corrupt copy
//! of the file on one node or a failed upload is caught. The hashes are gathered on rank 0,
//! which compares them with the hashes of the same parts in its own copy of the file (the
//! reference). When the file carries a provenance record, rank 0 first checks its copy as a
//! whole against the record's content hash; without one, rank 0's copy is the reference. The
//! verdict goes to every rank, so a mismatch anywhere makes every rank return the same
//! [`Error::RankFailed`] naming the rank and the part.
//!
//! The reference costs rank 0 one read of the whole file (and a second one for the content
//! hash when there is a record): what it buys is that no rank needs the others' bytes.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use super::comm::Comm;
use super::load::Loaded;
use super::plan::{Part, Plan};
use crate::provenance::{self, Sha256Hash};
use crate::{Error, ModelFile, Result, Slice, Source};

/// sha256 of each loaded part's bytes, read back from its device, in plan order.
pub fn loaded_digests(loaded: &Loaded) -> Result<Vec<[u8; 32]>> {
    loaded
        .parts
        .iter()
        .map(|(_, t)| {
            let mut h = Sha256::new();
            t.for_each_chunk(|_, bytes| {
                h.update(bytes);
                Ok(())
            })?;
            Ok(h.finalize().into())
        })
        .collect()
}

/// sha256 of one part's bytes in `file` (this process's copy).
pub fn file_digest(file: &ModelFile, part: &Part) -> Result<[u8; 32]> {
    let info = file.tensor(&part.name)?;
    let layout = part.slice.layout(file.file_of(info), info)?;
    let source = match part.slice {
        Slice::Whole => Source::of(file, info),
        _ => Source::slice(file, info, &layout.bytes),
    };
    let total = layout.bytes.total() as usize;
    let mut h = Sha256::new();
    let mut scratch = Vec::new();
    let step = 8 << 20;
    let mut pos = 0;
    while pos < total {
        let n = step.min(total - pos);
        h.update(source.chunk(pos, n, &mut scratch));
        pos += n;
    }
    Ok(h.finalize().into())
}

/// What every part of `plan` hashes to in `file`, per device, after checking `file` against
/// its provenance record when it has one ([`Error::ContentHashMismatch`] otherwise). A part
/// several devices hold (a replicated tensor) is hashed once.
pub fn reference(file: &ModelFile, plan: &Plan) -> Result<Vec<Vec<[u8; 32]>>> {
    if let Some(record) = provenance::read_record(file)? {
        let computed = provenance::content_hash(file)?;
        if computed != record.content_hash {
            return Err(Error::ContentHashMismatch {
                path: file.path().to_path_buf(),
                recorded: record.content_hash.to_string(),
                computed: computed.to_string(),
            });
        }
    }
    let mut seen: HashMap<(&str, &Slice), [u8; 32]> = HashMap::new();
    plan.devices
        .iter()
        .map(|d| {
            d.tensors
                .iter()
                .map(|p| match seen.get(&(p.name.as_str(), &p.slice)) {
                    Some(h) => Ok(*h),
                    None => {
                        let h = file_digest(file, p)?;
                        seen.insert((&p.name, &p.slice), h);
                        Ok(h)
                    }
                })
                .collect()
        })
        .collect()
}

/// The first part of `device`'s whose digest differs from the reference, as an error naming
/// the device (rank), the tensor and the part.
pub fn compare(
    plan: &Plan,
    device: usize,
    digests: &[[u8; 32]],
    reference: &[Vec<[u8; 32]>],
) -> Result<()> {
    let fail = |reason: String| Error::RankFailed {
        rank: device,
        during: "verifying loaded slices".into(),
        reason,
    };
    let (Some(parts), Some(want)) = (plan.devices.get(device), reference.get(device)) else {
        return Err(fail(format!("the plan has no device {device}")));
    };
    if digests.len() != want.len() {
        return Err(fail(format!(
            "{} parts hashed, the plan gives it {}",
            digests.len(),
            want.len()
        )));
    }
    for ((part, got), want) in parts.tensors.iter().zip(digests).zip(want) {
        if got != want {
            return Err(fail(format!(
                "'{}' ({}) hashes to {}, the file to {}",
                part.name,
                part.slice,
                Sha256Hash(*got),
                Sha256Hash(*want)
            )));
        }
    }
    Ok(())
}

/// Check, across the group, that every rank's loaded parts (`loaded`, this rank's part of
/// `plan`) hash as `file` says; see the module documentation. Collective: every rank calls it.
/// Every rank returns the same result.
pub fn verify(comm: &dyn Comm, file: &ModelFile, plan: &Plan, loaded: &Loaded) -> Result<()> {
    let rank = comm.rank();
    let during = "hashing loaded slices";
    let mine = match loaded_digests(loaded) {
        Ok(d) => {
            comm.agree(during, Ok(()))?;
            d
        }
        Err(e) => return comm.agree(during, Err(e)),
    };
    let flat: Vec<u8> = mine.iter().flatten().copied().collect();
    let all = comm.all_gather(&flat)?;
    // Rank 0 judges; its verdict (empty: all good, else the error's text and the rank) goes to
    // every rank.
    let mut verdict = Vec::new();
    if rank == 0 {
        let judged = reference(file, plan).and_then(|reference| {
            all.iter().enumerate().try_for_each(|(r, bytes)| {
                let digests: Vec<[u8; 32]> = bytes
                    .chunks_exact(32)
                    .map(|c| {
                        let mut d = [0u8; 32];
                        d.copy_from_slice(c);
                        d
                    })
                    .collect();
                compare(plan, r, &digests, &reference)
            })
        });
        if let Err(e) = judged {
            let (r, reason) = match e {
                Error::RankFailed { rank, reason, .. } => (rank, reason),
                other => (0, other.to_string()),
            };
            verdict = serde_json::to_vec(&(r, &reason)).unwrap_or_else(|_| reason.into_bytes());
        }
    }
    comm.broadcast(0, &mut verdict)?;
    if verdict.is_empty() {
        return Ok(());
    }
    let (r, reason): (usize, String) = serde_json::from_slice(&verdict)
        .unwrap_or_else(|_| (0, String::from_utf8_lossy(&verdict).into_owned()));
    Err(Error::RankFailed {
        rank: r,
        during: "verifying loaded slices".into(),
        reason,
    })
}
