//! PEFT adapters: `adapter_config.json` beside `adapter_model.safetensors` (or the older
//! `adapter_model.bin`, a PyTorch state dict), as `PeftModel.save_pretrained` writes them.
//!
//! Keys are `base_model.model.<module>.lora_A.weight` (`[r, in]`) and `...lora_B.weight`
//! (`[out, r]`). Any other key under `base_model.model.` is a whole tensor the adapter replaces:
//! a module listed in `modules_to_save`, or a bias trained with `bias="all"`/`"lora_only"`
//! (`get_peft_model_state_dict` saves both under the base model's own name, and
//! `set_peft_model_state_dict` loads them over the base).
//!
//! Every config field that changes what the adapter computes is honoured or refused; fields that
//! only steer training (dropout, initialisation, `inference_mode`) are not read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde_json::Value as Json;

use super::{LoraAdapter, LoraModule, Naming, Replacement};
use crate::error::{Error, Result};
use crate::formats::ModelFile;
use crate::Device;

const PREFIX: &str = "base_model.model.";
const CONFIG: &str = "adapter_config.json";
const WEIGHTS: [&str; 2] = ["adapter_model.safetensors", "adapter_model.bin"];

/// The parts of `adapter_config.json` that decide what the adapter computes.
struct Config {
    r: f64,
    alpha: f64,
    use_rslora: bool,
    fan_in_fan_out: bool,
    targets: Targets,
    exclude: Option<Targets>,
    rank_pattern: Vec<(Regex, String, f64)>,
    alpha_pattern: Vec<(Regex, String, f64)>,
    layers_to_transform: Option<Vec<u64>>,
}

/// `target_modules` / `exclude_modules`: a list of name suffixes, or one regular expression the
/// whole module name must match (PEFT's `check_target_module_exists`).
enum Targets {
    Any,
    Suffixes(Vec<String>),
    Regex(Regex),
}

impl Targets {
    fn parse(value: &Json, field: &str, bad: &dyn Fn(String) -> Error) -> Result<Targets> {
        match value {
            Json::String(s) if s == "all-linear" => Ok(Targets::Any),
            Json::String(s) => Regex::new(&format!("^(?:{s})$"))
                .map(Targets::Regex)
                .map_err(|e| bad(format!("{field}: not a regular expression: {e}"))),
            Json::Array(items) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad(format!("{field}: {v} is not a string")))
                })
                .collect::<Result<_>>()
                .map(Targets::Suffixes),
            other => Err(bad(format!(
                "{field}: expected a list or a string, found {other}"
            ))),
        }
    }

    fn matches(&self, module: &str) -> bool {
        match self {
            Targets::Any => true,
            Targets::Suffixes(list) => list
                .iter()
                .any(|t| module == t || module.ends_with(&format!(".{t}"))),
            Targets::Regex(re) => re.is_match(module),
        }
    }
}

/// The first pattern whose regex matches `module` as PEFT's `get_pattern_key` matches it
/// (`re.match(rf"(.*\.)?({key})$", module)`), in the order the config lists them.
fn pattern_value(patterns: &[(Regex, String, f64)], module: &str) -> Option<f64> {
    patterns
        .iter()
        .find(|(re, _, _)| re.is_match(module))
        .map(|&(_, _, v)| v)
}

fn parse_patterns(
    value: Option<&Json>,
    field: &str,
    bad: &dyn Fn(String) -> Error,
) -> Result<Vec<(Regex, String, f64)>> {
    let Some(Json::Object(map)) = value else {
        return match value {
            None | Some(Json::Null) => Ok(Vec::new()),
            Some(other) => Err(bad(format!("{field}: expected an object, found {other}"))),
        };
    };
    map.iter()
        .map(|(key, v)| {
            let n = v
                .as_f64()
                .ok_or_else(|| bad(format!("{field}['{key}']: {v} is not a number")))?;
            let re = Regex::new(&format!(r"^(?:.*\.)?(?:{key})$"))
                .map_err(|e| bad(format!("{field}: '{key}' is not a regular expression: {e}")))?;
            Ok((re, key.clone(), n))
        })
        .collect()
}

impl Config {
    fn parse(path: &Path, json: &Json) -> Result<Config> {
        let bad = |reason: String| Error::BadAdapter {
            path: path.to_path_buf(),
            reason,
        };
        let field = |name: &str| json.get(name).filter(|v| !v.is_null());
        if let Some(t) = field("peft_type").and_then(Json::as_str) {
            if t != "LORA" {
                return Err(bad(format!(
                    "peft_type is {t}; only LORA adapters are read"
                )));
            }
        }
        // Variants that compute something other than W + s·B·A: refused, never ignored.
        let refuse_true = [
            ("use_dora", "DoRA (use_dora) is not supported"),
            ("lora_bias", "a bias on lora_B (lora_bias) is not supported"),
            ("use_qalora", "QALoRA (use_qalora) is not supported"),
            ("use_bdlora", "BD-LoRA (use_bdlora) is not supported"),
        ];
        for (name, reason) in refuse_true {
            if field(name).and_then(Json::as_bool) == Some(true) {
                return Err(bad(reason.into()));
            }
        }
        let refuse_set = [
            "layer_replication",
            "target_parameters",
            "alora_invocation_tokens",
            "trainable_token_indices",
            "layers_pattern",
        ];
        for name in refuse_set {
            if field(name).is_some_and(|v| !matches!(v, Json::Array(a) if a.is_empty())) {
                return Err(bad(format!(
                    "{name} is set; adapters using it are not supported"
                )));
            }
        }
        let number = |name: &str| {
            field(name)
                .ok_or_else(|| bad(format!("{name} is missing")))?
                .as_f64()
                .ok_or_else(|| bad(format!("{name} is not a number")))
        };
        let r = number("r")?;
        let alpha = number("lora_alpha")?;
        let flag = |name: &str| field(name).and_then(Json::as_bool).unwrap_or(false);
        let targets = match field("target_modules") {
            Some(v) => Targets::parse(v, "target_modules", &bad)?,
            None => Targets::Any,
        };
        let exclude = field("exclude_modules")
            .map(|v| Targets::parse(v, "exclude_modules", &bad))
            .transpose()?;
        let layers_to_transform = match field("layers_to_transform") {
            None => None,
            Some(Json::Number(n)) => Some(vec![n
                .as_u64()
                .ok_or_else(|| bad(format!("layers_to_transform: {n} is not a layer")))?]),
            Some(Json::Array(a)) => Some(
                a.iter()
                    .map(|v| {
                        v.as_u64()
                            .ok_or_else(|| bad(format!("layers_to_transform: {v} is not a layer")))
                    })
                    .collect::<Result<_>>()?,
            ),
            Some(other) => return Err(bad(format!("layers_to_transform: {other}"))),
        };
        Ok(Config {
            r,
            alpha,
            use_rslora: flag("use_rslora"),
            fan_in_fan_out: flag("fan_in_fan_out"),
            targets,
            exclude,
            rank_pattern: parse_patterns(field("rank_pattern"), "rank_pattern", &bad)?,
            alpha_pattern: parse_patterns(field("alpha_pattern"), "alpha_pattern", &bad)?,
            layers_to_transform,
        })
    }

    /// Why `module` (rank `rank` from its tensors) cannot be part of this adapter, if it
    /// cannot; else its scale.
    fn scale_of(&self, module: &str, rank: usize) -> std::result::Result<f32, String> {
        if !self.targets.matches(module) {
            return Err("not matched by target_modules".into());
        }
        if self.exclude.as_ref().is_some_and(|e| e.matches(module)) {
            return Err("matched by exclude_modules".into());
        }
        if let Some(layers) = &self.layers_to_transform {
            // PEFT finds the layer index as the number after `layers.`/`h.`/`blocks.`...; any
            // `.N.` segment it can find must be listed.
            let layer = module
                .split('.')
                .find_map(|s| s.parse::<u64>().ok())
                .ok_or("layers_to_transform is set but the name has no layer number")?;
            if !layers.contains(&layer) {
                return Err(format!("layer {layer} is not in layers_to_transform"));
            }
        }
        let r = pattern_value(&self.rank_pattern, module).unwrap_or(self.r);
        if r != rank as f64 {
            return Err(format!("its tensors have rank {rank}, the config says {r}"));
        }
        let alpha = pattern_value(&self.alpha_pattern, module).unwrap_or(self.alpha);
        let scale = if self.use_rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        };
        Ok(scale as f32)
    }
}

/// Whether `path` is a PEFT adapter: a directory with `adapter_config.json`, or that file.
pub(super) fn is_peft(path: &Path) -> bool {
    path.join(CONFIG).is_file() || path.file_name().is_some_and(|n| n == CONFIG)
}

/// The config and tensor file of the PEFT adapter at `path` (its directory or its config).
pub(super) fn files(path: &Path) -> Result<(PathBuf, PathBuf)> {
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    let weights: PathBuf = WEIGHTS
        .iter()
        .map(|w| dir.join(w))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::BadAdapter {
            path: dir.clone(),
            reason: format!("neither {} nor {} is there", WEIGHTS[0], WEIGHTS[1]),
        })?;
    Ok((dir.join(CONFIG), weights))
}

pub(super) fn open(path: &Path) -> Result<LoraAdapter> {
    let (config_path, weights) = files(path)?;
    let dir = config_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let text = mlmf_core::files::read_regular_to_string(&config_path)?;
    let json: Json = serde_json::from_str(&text).map_err(|e| Error::BadAdapter {
        path: config_path.clone(),
        reason: format!("not JSON: {e}"),
    })?;
    let config = Config::parse(&config_path, &json)?;
    let file = ModelFile::open(&weights)?;
    let bad = |reason: String| Error::BadAdapter {
        path: weights.clone(),
        reason,
    };

    // Pair lora_A and lora_B by module.
    let mut pairs: HashMap<&str, [Option<&str>; 2]> = HashMap::new();
    let mut replaced = Vec::new();
    for t in file.tensors() {
        let name = t.name.as_str();
        let key = name
            .strip_prefix(PREFIX)
            .ok_or_else(|| bad(format!("tensor '{name}' does not start with '{PREFIX}'")))?;
        if let Some(module) = key.strip_suffix(".lora_A.weight") {
            pairs.entry(module).or_default()[0] = Some(name);
        } else if let Some(module) = key.strip_suffix(".lora_B.weight") {
            pairs.entry(module).or_default()[1] = Some(name);
        } else if key.contains(".lora_embedding_") {
            return Err(bad(format!(
                "'{name}': LoRA on embeddings is not supported"
            )));
        } else if key.contains(".lora_") {
            return Err(bad(format!("'{name}': unknown LoRA tensor kind")));
        } else {
            replaced.push((key.to_string(), name));
        }
    }

    let mut modules = Vec::with_capacity(pairs.len());
    let mut problems = Vec::new();
    let mut names: Vec<&str> = pairs.keys().copied().collect();
    names.sort_unstable();
    for module in names {
        let [Some(a_name), Some(b_name)] = pairs[module] else {
            problems.push(format!("{module}: lora_A or lora_B is missing"));
            continue;
        };
        let a = super::read_f32(&file, a_name)?;
        let b = super::read_f32(&file, b_name)?;
        let (&[rank, in_features], &[out_features, b_rank]) = (&a.0[..], &b.0[..]) else {
            problems.push(format!(
                "{module}: lora_A {:?} and lora_B {:?} are not matrices",
                a.0, b.0
            ));
            continue;
        };
        if b_rank != rank {
            problems.push(format!("{module}: lora_A has rank {rank}, lora_B {b_rank}"));
            continue;
        }
        match config.scale_of(module, rank) {
            Ok(scale) => modules.push(LoraModule {
                name: module.to_string(),
                rank,
                in_features,
                out_features,
                a: a.1,
                b: b.1,
                scale,
            }),
            Err(reason) => problems.push(format!("{module}: {reason}")),
        }
    }
    if !problems.is_empty() {
        return Err(bad(problems.join("; ")));
    }
    let replacements = replaced
        .into_iter()
        .map(|(key, name)| {
            Ok(Replacement {
                name: key,
                tensor: Device::Cpu.load(&file, name)?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(LoraAdapter {
        path: dir,
        naming: Naming::HuggingFace,
        arch: None,
        fan_in_fan_out: config.fan_in_fan_out,
        modules,
        replacements,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Result<Config> {
        Config::parse(
            Path::new("adapter_config.json"),
            &serde_json::from_str(json).unwrap(),
        )
    }

    #[test]
    fn scale_follows_r_alpha_rslora_and_patterns() {
        let c =
            config(r#"{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}"#).unwrap();
        assert_eq!(c.scale_of("model.layers.0.self_attn.q_proj", 4), Ok(2.0));
        assert!(c.scale_of("model.layers.0.self_attn.k_proj", 4).is_err());
        assert!(c.scale_of("model.layers.0.self_attn.q_proj", 8).is_err());
        let c = config(r#"{"r": 4, "lora_alpha": 8, "use_rslora": true}"#).unwrap();
        assert_eq!(c.scale_of("x.q_proj", 4), Ok(4.0));
        let c = config(
            r#"{"r": 4, "lora_alpha": 8, "target_modules": "model\\.layers\\.\\d+\\.mlp\\..*",
                "rank_pattern": {"layers.1.mlp.down_proj": 8},
                "alpha_pattern": {"down_proj": 32}}"#,
        )
        .unwrap();
        assert_eq!(c.scale_of("model.layers.0.mlp.down_proj", 4), Ok(8.0));
        assert_eq!(c.scale_of("model.layers.1.mlp.down_proj", 8), Ok(4.0));
        assert!(c.scale_of("model.layers.1.mlp.down_proj", 4).is_err());
        // A regex target must match the whole name.
        assert!(c.scale_of("x.model.layers.0.mlp.up_proj", 4).is_err());
        assert!(c.scale_of("model.layers.0.self_attn.q_proj", 4).is_err());
    }

    #[test]
    fn exclude_and_layers_to_transform() {
        let c = config(
            r#"{"r": 2, "lora_alpha": 2, "target_modules": ["q_proj"],
                "exclude_modules": ["layers.1.self_attn.q_proj"], "layers_to_transform": [0, 1]}"#,
        )
        .unwrap();
        assert!(c.scale_of("model.layers.0.self_attn.q_proj", 2).is_ok());
        assert!(c.scale_of("model.layers.1.self_attn.q_proj", 2).is_err());
        assert!(c.scale_of("model.layers.2.self_attn.q_proj", 2).is_err());
    }

    #[test]
    fn variants_that_change_the_math_are_refused() {
        for extra in [
            r#""use_dora": true"#,
            r#""lora_bias": true"#,
            r#""layer_replication": [[0, 2]]"#,
            r#""peft_type": "IA3""#,
            r#""target_parameters": ["experts.w1"]"#,
        ] {
            let json = format!(r#"{{"r": 4, "lora_alpha": 8, {extra}}}"#);
            let err = config(&json).err().expect(extra);
            assert!(matches!(err, Error::BadAdapter { .. }), "{err}");
        }
        assert!(config(r#"{"lora_alpha": 8}"#).is_err());
        assert!(config(r#"{"r": 4, "lora_alpha": 8, "target_modules": "("}"#).is_err());
    }
}
