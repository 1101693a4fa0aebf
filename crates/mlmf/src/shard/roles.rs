//! What a tensor's name says about where it may be cut: its layer (for layer splits) and its
//! role in a transformer block (for row splits). Hugging Face and GGUF names are both read;
//! a name no rule knows passes through as "other", which is replicated or placed whole.

use std::sync::OnceLock;

use regex::Regex;

/// A tensor's part in tensor parallelism (Megatron's pairing): the matrices whose output rows
/// are split, the ones after them whose input columns are split, and the vocabulary matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Attention query projection: output rows are heads.
    Q,
    /// Attention key and value projections: output rows are key-value heads.
    Kv,
    /// Attention output projection: input columns are the query heads.
    O,
    /// Feed-forward up and gate projections: output rows are the inner features.
    Up,
    /// Feed-forward down projection: input columns are the inner features.
    Down,
    /// Token embedding or output head: rows are the vocabulary.
    Vocab,
    Other,
}

impl Role {
    /// The dimension the role's split cuts, shared by the matrices of one group.
    pub fn group(self) -> Option<Group> {
        match self {
            Role::Q | Role::Kv | Role::O => Some(Group::Attention),
            Role::Up | Role::Down => Some(Group::Ffn),
            Role::Vocab => Some(Group::Vocab),
            Role::Other => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    Attention,
    Ffn,
    Vocab,
}

/// Name fragments and the role they give, first match wins (BERT's `attention.output.dense`
/// before its FFN `output.dense`). A fragment matches where a name component starts.
const ROLES: &[(&str, Role)] = &[
    ("attn_q.", Role::Q),
    ("q_proj.", Role::Q),
    ("attention.self.query.", Role::Q),
    ("attn_k.", Role::Kv),
    ("attn_v.", Role::Kv),
    ("k_proj.", Role::Kv),
    ("v_proj.", Role::Kv),
    ("attention.self.key.", Role::Kv),
    ("attention.self.value.", Role::Kv),
    ("attn_output.", Role::O),
    ("o_proj.", Role::O),
    ("attention.output.dense.", Role::O),
    ("ffn_up.", Role::Up),
    ("ffn_gate.", Role::Up),
    ("up_proj.", Role::Up),
    ("gate_proj.", Role::Up),
    ("intermediate.dense.", Role::Up),
    ("ffn_down.", Role::Down),
    ("down_proj.", Role::Down),
    ("output.dense.", Role::Down),
    ("token_embd.", Role::Vocab),
    ("embed_tokens.", Role::Vocab),
    ("word_embeddings.", Role::Vocab),
    ("lm_head.", Role::Vocab),
];

/// The role of the tensor called `name`.
pub fn role(name: &str) -> Role {
    // GGUF's output head is the bare `output.weight`.
    if name == "output.weight" {
        return Role::Vocab;
    }
    ROLES
        .iter()
        .find(|(frag, _)| {
            name.match_indices(frag)
                .any(|(at, _)| at == 0 || name.as_bytes()[at - 1] == b'.')
        })
        .map_or(Role::Other, |&(_, r)| r)
}

/// Where a tensor sits in the stack of blocks: the prefix naming the stack (`blk.`,
/// `model.layers.`, `encoder.layer.`, `decoder.layers.`) and the block number.
pub fn layer(name: &str) -> Option<(&str, usize)> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r"^((?:.*[./])?(?:blk|layers?|h|blocks?|features)[./])(\d+)(?:[./]|$)")
            .expect("a valid pattern")
    });
    let caps = re.captures(name)?;
    let prefix = caps.get(1)?.as_str();
    let n = caps.get(2)?.as_str().parse().ok()?;
    Some((prefix, n))
}

/// Whether a tensor outside the blocks belongs with the first device (the input side:
/// embeddings) rather than the last (final norm, output head), as llama.cpp places them.
pub fn is_input_side(name: &str) -> bool {
    [
        "embd",
        "embed",
        "wte",
        "wpe",
        "position",
        "token_type",
        "patch",
    ]
    .iter()
    .any(|k| name.contains(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_of_hf_and_gguf_names() {
        let cases = [
            ("blk.3.attn_q.weight", Role::Q),
            ("model.layers.0.self_attn.k_proj.weight", Role::Kv),
            ("encoder.layer.1.attention.self.value.bias", Role::Kv),
            ("encoder.layer.1.attention.output.dense.weight", Role::O),
            (
                "encoder.layer.1.attention.output.LayerNorm.weight",
                Role::Other,
            ),
            ("encoder.layer.1.output.dense.weight", Role::Down),
            ("encoder.layer.1.intermediate.dense.bias", Role::Up),
            ("blk.0.ffn_gate.weight", Role::Up),
            ("token_embd.weight", Role::Vocab),
            ("output.weight", Role::Vocab),
            ("output_norm.weight", Role::Other),
            ("embeddings.word_embeddings.weight", Role::Vocab),
            ("embeddings.position_embeddings.weight", Role::Other),
        ];
        for (name, want) in cases {
            assert_eq!(role(name), want, "{name}");
        }
    }

    #[test]
    fn layer_numbers() {
        assert_eq!(layer("blk.12.attn_q.weight"), Some(("blk.", 12)));
        assert_eq!(
            layer("model.layers.3.mlp.up_proj.weight"),
            Some(("model.layers.", 3))
        );
        assert_eq!(
            layer("encoder.layer.5.output.dense.bias"),
            Some(("encoder.layer.", 5))
        );
        assert_eq!(
            layer("decoder.layers.0.fc1.weight"),
            Some(("decoder.layers.", 0))
        );
        assert_eq!(
            layer("features.17.conv.0.0.weight"),
            Some(("features.", 17))
        );
        assert_eq!(layer("token_embd.weight"), None);
        assert_eq!(layer("output_norm.weight"), None);
    }
}
