//! Reading a tensor back from GPU pages to the host in bounded chunks.

use std::sync::mpsc;

use crate::device::{Event, Fill, Kind};
use crate::storage::GpuStorage;
use mlmf_core::{Error, Result};

/// Call `f(offset, bytes)` for consecutive chunks of the tensor's bytes, in order. At most two
/// staging buffers of the device's staging size (or the tensor's, when smaller) exist at a time:
/// the next chunk is copied while the previous one is handed to `f`.
pub(crate) fn for_each_chunk(
    storage: &GpuStorage,
    mut f: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let gpu = storage.gpu();
    gpu.count(Event::Readback);
    let len = storage.byte_len();
    // Slots no larger than the tensor: a small readback (a decoding step's logits) should not
    // make two staging halves of the device's full size.
    let half = gpu
        .inner
        .staging_half
        .min(len.next_multiple_of(256))
        .max(256);
    let make = |i: usize| {
        gpu.take(
            Kind::ReadStaging,
            half,
            &format!("mlmf readback staging {i}"),
            Fill::Queue,
        )
    };
    let slots = [make(0)?, make(1)?];
    let chunks: Vec<(u64, u64)> = (0..len.div_ceil(half))
        .map(|k| (k * half, half.min(len - k * half)))
        .collect();

    // Issue the copy of chunk k into slot k % 2 and request its mapping.
    let issue = |k: usize| -> mpsc::Receiver<Result<(), wgpu::BufferAsyncError>> {
        let (pos, n) = chunks[k];
        let padded = n.next_multiple_of(4);
        let slot = &slots[k % 2];
        let mut encoder =
            gpu.inner
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("mlmf readback"),
                });
        for (page, page_off, src_off, count) in storage.spans(pos, padded) {
            encoder.copy_buffer_to_buffer(page, page_off, slot, src_off - pos, count);
        }
        gpu.submit([encoder.finish()]);
        let (tx, rx) = mpsc::channel();
        slot.map_async(wgpu::MapMode::Read, 0..padded, move |r| {
            let _ = tx.send(r);
        });
        rx
    };

    let mut pending = (!chunks.is_empty()).then(|| issue(0));
    for k in 0..chunks.len() {
        let rx = pending
            .take()
            .expect("a mapping is pending for every chunk");
        let next = (k + 1 < chunks.len()).then(|| issue(k + 1));
        gpu.wait("readback")?;
        rx.recv()
            .map_err(|e| readback_err(e.to_string()))?
            .map_err(|e| readback_err(e.to_string()))?;
        let (pos, n) = chunks[k];
        let slot = &slots[k % 2];
        {
            let view = slot
                .get_mapped_range(0..n.next_multiple_of(4))
                .map_err(|e| readback_err(e.to_string()))?;
            f(pos, &view[..n as usize])?;
        }
        slot.unmap();
        pending = next;
    }
    Ok(())
}

fn readback_err(reason: String) -> Error {
    Error::Gpu {
        during: "readback".into(),
        reason,
    }
}
