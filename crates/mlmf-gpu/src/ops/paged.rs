//! The dispatch loop shared by element-wise launchers (convert, dequant): a kernel that
//! maps each element of one paged tensor to one element of a new paged tensor runs once per
//! overlap of an input page with an output page.
//!
//! Input pages hold whole blocks (see [`DType::page_unit`]), so input page `p` starts at element
//! `p * in_page_elems`, with `in_page_elems = page_bytes / block_bytes * block_elems`. Output
//! pages hold `page_bytes / out_bytes` elements each. A kernel gets its piece's element count and
//! the piece's first element relative to its input page and to its output page; it reads block
//! `(in_offset + i) / block_elems` of the input page and writes element `out_offset + i` of the
//! output page.

use crate::device::kernels::{Kernel, PipelineKey};
use crate::device::Fill;
use crate::storage::GpuStorage;
use crate::tensor::Tensor;
use mlmf_core::DType;
use mlmf_core::{Error, Result};

/// The uniform parameters of convert.wgsl and dequant.wgsl for one dispatch, fields in WGSL
/// order.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    /// Elements in the piece.
    count: u32,
    /// First element of the piece, counted from the start of the input page and of the output
    /// page.
    in_offset: u32,
    out_offset: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == Kernel::Convert.params_bytes());
const _: () = assert!(std::mem::size_of::<Params>() == Kernel::Dequant.params_bytes());

/// The overlaps of input pages of `in_page_elems` elements with output pages of
/// `out_page_elems` elements over `elems` elements, in order, as
/// `(input page, output page, first element, end element)`.
pub(crate) fn spans(
    elems: u64,
    in_page_elems: u64,
    out_page_elems: u64,
) -> Vec<(u64, u64, u64, u64)> {
    let mut out = Vec::new();
    let mut at = 0u64;
    while at < elems {
        let (ip, op) = (at / in_page_elems, at / out_page_elems);
        let end = elems
            .min((ip + 1) * in_page_elems)
            .min((op + 1) * out_page_elems);
        out.push((ip, op, at, end));
        at = end;
    }
    out
}

/// How a kernel run by [`map_elements`] covers its elements.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Grid {
    /// Invocations per workgroup (the kernel's `WG`).
    pub workgroup: u32,
    /// Elements per invocation. A dispatch has one invocation per run of that many elements of
    /// the input page that its piece touches, so a kernel may align its runs to the input page
    /// (the dequant kernels' groups) or count them from the piece's first element (convert,
    /// which then has at most one idle invocation).
    pub elems_per_invocation: u32,
    /// Output pages are split at multiples of this many bytes (a power of two, at least 4): 16
    /// lets a kernel store vec4s of f32 or f16, since every piece then starts and ends at a
    /// multiple of 4 elements (input pages hold whole blocks of 32 or 256).
    pub out_align: u64,
}

/// Run the kernel `key` (of convert.wgsl or dequant.wgsl) over every element of `t`, whose bytes
/// are `src`, into new pages of `out_dtype` elements, and return those pages. The work is
/// submitted, not waited for (readback waits).
pub(crate) fn map_elements(
    t: &Tensor,
    src: &GpuStorage,
    key: &PipelineKey,
    out_dtype: DType,
    grid: Grid,
) -> Result<GpuStorage> {
    t.check_layout()?;
    let gpu = src.gpu();
    let name = key.kernel.name();
    let dtype = t.dtype();
    let elems = t.shape().elem_count();
    let limit = |reason: &str| Error::DeviceLimit {
        tensor: t.name().to_string(),
        bytes: t.byte_len(),
        reason: reason.to_string(),
    };
    let in_page_elems = src.page_bytes() / dtype.block_bytes() * dtype.block_elems();
    let out_size = out_dtype.block_bytes();
    let out_bytes = elems
        .checked_mul(out_size)
        .ok_or_else(|| limit("the output size overflows 64 bits"))?;
    let unit = lcm_pow2(
        GpuStorage::page_unit(gpu, out_dtype, t.shape()),
        grid.out_align,
    );
    let out = GpuStorage::allocate(gpu, t.name(), out_bytes, unit, Fill::KERNEL)?;
    let out_page_elems = out.page_bytes() / out_size;
    let to_u32 =
        |v: u64| u32::try_from(v).map_err(|_| limit("a page holds more than 2^32 elements"));

    let pipeline = gpu.pipeline(key)?;
    let mut encoder = gpu.record(name);
    for (ip, op, at, end) in spans(elems, in_page_elems, out_page_elems) {
        let params = Params {
            count: to_u32(end - at)?,
            in_offset: to_u32(at - ip * in_page_elems)?,
            out_offset: to_u32(at - op * out_page_elems)?,
            _pad: 0,
        };
        let bind = super::launch::bind(
            &mut encoder,
            &pipeline,
            name,
            bytemuck::bytes_of(&params),
            &[src.page(ip as usize)?, out.page(op as usize)?],
        )?;
        let per = u64::from(grid.elems_per_invocation.max(1));
        let first = u64::from(params.in_offset);
        let invocations = (first + u64::from(params.count)).div_ceil(per) - first / per;
        gpu.dispatch(&mut encoder, &pipeline, &bind, invocations, grid.workgroup);
    }
    encoder.finish();
    Ok(out)
}

/// The least common multiple of `unit` and the power of two `align`.
fn lcm_pow2(unit: u64, align: u64) -> u64 {
    let common = 1u64 << unit.trailing_zeros().min(align.trailing_zeros());
    unit / common * align
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lcm_pow2_is_the_least_common_multiple() {
        for (unit, align, lcm) in [(4, 16, 16), (36, 16, 144), (128, 16, 128), (6, 4, 12)] {
            assert_eq!(lcm_pow2(unit, align), lcm);
        }
    }

    #[test]
    fn spans_cover_every_element_once_and_stay_inside_both_pages() {
        for (elems, inp, outp) in [
            (0, 7, 5),
            (1, 7, 5),
            (35, 7, 5),
            (1000, 224, 64),
            (64, 64, 64),
        ] {
            let s = spans(elems, inp, outp);
            let mut at = 0;
            for &(ip, op, start, end) in &s {
                assert_eq!(start, at);
                assert!(start < end);
                assert!(ip * inp <= start && end <= (ip + 1) * inp);
                assert!(op * outp <= start && end <= (op + 1) * outp);
                at = end;
            }
            assert_eq!(at, elems);
        }
    }
}
