//! `mlmf plan`: the placement plan of a model file, or of a synthetic tensor index of a model
//! too large to keep here, over N devices.

use std::io::Write;
use std::path::PathBuf;

use clap::ValueEnum;
use mlmf::shard::{synthetic, Plan, Replicated, Split, Targets};
use mlmf::{DType, ModelFile};

use crate::{json_line, CliError, Result};

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum SplitArg {
    Replicate,
    Layer,
    Row,
}

impl SplitArg {
    pub(crate) fn split(self) -> Split {
        match self {
            SplitArg::Replicate => Split::Replicate,
            SplitArg::Layer => Split::Layer,
            SplitArg::Row => Split::Row,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum ReplicatedArg {
    Read,
    Broadcast,
}

impl ReplicatedArg {
    pub(crate) fn get(self) -> Replicated {
        match self {
            ReplicatedArg::Read => Replicated::Read,
            ReplicatedArg::Broadcast => Replicated::Broadcast,
        }
    }
}

/// One share of `--ratios 3,1`.
pub(crate) fn parse_ratio(r: &str) -> Result<f64, String> {
    r.trim()
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && *x >= 0.0)
        .ok_or_else(|| format!("'{r}' is not a ratio (a number, 0 or more)"))
}

#[derive(clap::Args)]
pub(crate) struct PlanArgs {
    /// The model file (or directory); or use --synthetic.
    file: Option<PathBuf>,
    /// A tensor index built from a model's published shapes instead of a file:
    /// llama-70b or llama-8b (GGUF names).
    #[arg(long)]
    synthetic: Option<String>,
    /// The matrices' dtype in a --synthetic index (norms are F32).
    #[arg(long, default_value = "Q4_K")]
    dtype: String,
    #[arg(long, default_value_t = 2)]
    devices: usize,
    #[arg(long, value_enum)]
    split: SplitArg,
    /// Each device's share, like llama.cpp's --tensor-split: 3,1. Default: the budgets'
    /// proportions when given, else equal.
    #[arg(long, value_delimiter = ',', value_parser = parse_ratio)]
    ratios: Vec<f64>,
    /// Each device's memory budget (100M, 8GiB, ...), comma-separated; a plan that puts
    /// more on a device is an error.
    #[arg(long, value_delimiter = ',', value_parser = crate::cache_sim::parse_bytes)]
    budgets: Vec<u64>,
    #[arg(long)]
    json: bool,
}

/// The plan: text (device totals, then each device's parts) or one JSON object.
pub(crate) fn plan(args: PlanArgs, out: &mut dyn Write) -> Result<()> {
    let targets = Targets {
        count: args.devices,
        ratios: (!args.ratios.is_empty()).then_some(args.ratios),
        budgets: args.budgets.iter().map(|&b| Some(b)).collect(),
    };
    let split = args.split.split();
    let plan = match (&args.file, &args.synthetic) {
        (Some(path), None) => Plan::for_file(&ModelFile::open(path)?, &split, &targets)?,
        (None, Some(model)) => {
            let dtype = DType::from_name(&args.dtype).ok_or_else(|| {
                CliError::Usage(format!("--dtype: no dtype called '{}'", args.dtype))
            })?;
            let (tensors, heads) = synthetic::index(model, dtype)?;
            let name = format!("synthetic:{model}:{}", dtype.name());
            Plan::new(&name, &tensors, Some(heads), &split, &targets)?
        }
        _ => {
            return Err(CliError::Usage(
                "give a model FILE or --synthetic MODEL, not both".into(),
            ))
        }
    };
    if args.json {
        return json_line(out, &plan.to_json(), false);
    }
    outln!(out, "{plan}");
    Ok(())
}
