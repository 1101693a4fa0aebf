// Workgroup reductions shared by the families that reduce rows (norm, softmax); kernels.rs
// prepends this file after common.wgsl. The including family declares `override WG: u32`, a
// power of two (the reductions halve it), and calls these from uniform control flow: every
// invocation of the workgroup, the same number of times.

var<workgroup> reduce_slots: array<f32, WG>;

// The sum of every invocation's `v`, returned to all of them. Summed as a tree: slot l takes
// slot l + s for s = WG/2, WG/4, ..., 1.
fn workgroup_sum(v: f32, l: u32) -> f32 {
    reduce_slots[l] = v;
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        workgroupBarrier();
        if l < s {
            reduce_slots[l] += reduce_slots[l + s];
        }
    }
    workgroupBarrier();
    let total = reduce_slots[0];
    // Nobody may start the next reduction (overwriting the slots) before all have read this one.
    workgroupBarrier();
    return total;
}

// The largest of every invocation's `v`, returned to all of them.
fn workgroup_max(v: f32, l: u32) -> f32 {
    reduce_slots[l] = v;
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        workgroupBarrier();
        if l < s {
            reduce_slots[l] = max(reduce_slots[l], reduce_slots[l + s]);
        }
    }
    workgroupBarrier();
    let top = reduce_slots[0];
    workgroupBarrier();
    return top;
}
