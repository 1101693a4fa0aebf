//! Image + text search with two separately trained models, joined by late fusion (not CLIP):
//! MobileNetV2 names each photo's most likely ImageNet classes; all-MiniLM-L6-v2 embeds those
//! class names and the text queries; a photo is the sum of its top classes' embeddings weighted
//! by their probabilities ([`LateFusion`] on the device), and photos and queries are ranked by
//! cosine. `examples/image_text_search.rs` prints and draws what [`search`] returns.
//!
//! [`search_distributed`] is the same search with each model on its own rank (modality-specific
//! placement): MobileNetV2 on rank 0, MiniLM on rank 1, each rank opening only its own model
//! file. Rank 0 sends the texts to embed (its photos' class names, then the queries) to every
//! rank, rank 1 embeds them in the same batches as [`search`] does, the embeddings are gathered
//! on rank 0, and rank 0 fuses and ranks.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fusion::late::LateFusion;
use crate::models::bert::BertEmbedder;
use crate::models::cache_dir;
use crate::models::mobilenet_v2::MobileNetV2;
use crate::multimodal::{imagenet_labels, top_k, Class, ImagePreprocess};
use crate::shard::{agreed, Comm};
use crate::{Device, ModelFile, Tensor};

/// Classes per photo that go into its embedding.
pub const TOP: usize = 5;

/// The rank that runs MobileNetV2 (and fuses) in [`search_distributed`].
pub const IMAGE_RANK: usize = 0;
/// The rank that runs MiniLM in [`search_distributed`] (rank 0 too in a world of one).
pub const TEXT_RANK: usize = 1;

/// Where the two models are.
#[derive(Clone, Debug)]
pub struct SearchModels {
    /// torchvision's `mobilenet_v2-b0353104.pth`.
    pub mobilenet: PathBuf,
    /// A sentence-transformers directory (all-MiniLM-L6-v2).
    pub minilm: PathBuf,
}

impl SearchModels {
    /// The files `scripts/fetch_models.py` puts in the model cache.
    pub fn cached() -> SearchModels {
        let dir = cache_dir();
        SearchModels {
            mobilenet: dir.join("mobilenet_v2-b0353104.pth"),
            minilm: dir.join("all-MiniLM-L6-v2"),
        }
    }
}

/// One photo: its top classes and its fused embedding.
#[derive(Clone, Debug)]
pub struct Photo {
    pub path: PathBuf,
    pub classes: Vec<Class>,
    pub embedding: Vec<f32>,
}

/// What a search found.
#[derive(Clone, Debug)]
pub struct Search {
    pub photos: Vec<Photo>,
    pub queries: Vec<String>,
    /// `scores[q][p]`: the cosine of query `q` and photo `p`.
    pub scores: Vec<Vec<f32>>,
}

impl Search {
    /// For each query, the photos' indices from best to worst.
    pub fn rankings(&self) -> Vec<Vec<usize>> {
        self.scores.iter().map(|row| ranked(row)).collect()
    }
}

/// Indices of `row` from the highest value to the lowest.
pub fn ranked(row: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    order
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-12)
}

/// Both models on `device`, in this process.
pub fn search<P: AsRef<Path>, Q: AsRef<str>>(
    models: &SearchModels,
    device: &Device,
    images: &[P],
    queries: &[Q],
) -> Result<Search> {
    let mobilenet = MobileNetV2::load(&ModelFile::open(&models.mobilenet)?, device)?;
    let minilm = BertEmbedder::open(&models.minilm, device)?;
    let classes = classify(&mobilenet, images)?;
    let batches = text_batches(&classes, queries);
    let embedded = batches
        .iter()
        .map(|texts| Ok(minilm.embed(texts)?.sentence_embeddings))
        .collect::<Result<Vec<_>>>()?;
    fuse(device, images, classes, queries, embedded)
}

/// [`search`] with MobileNetV2 on rank [`IMAGE_RANK`] and MiniLM on rank [`TEXT_RANK`] of
/// `comm` (ranks past them only join the collectives), each on its rank's `device`. Every rank
/// calls it with the same arguments; rank 0 returns the search, the others `None`. A rank that
/// fails (a model it cannot open, a photo it cannot read) makes every rank return
/// [`Error::RankFailed`].
pub fn search_distributed<P: AsRef<Path>, Q: AsRef<str>>(
    comm: &dyn Comm,
    models: &SearchModels,
    device: &Device,
    images: &[P],
    queries: &[Q],
) -> Result<Option<Search>> {
    let rank = comm.rank();
    let text_rank = TEXT_RANK.min(comm.size() - 1);
    // Each rank opens only the model it runs.
    let (mobilenet, minilm) = {
        let opened = (|| {
            let mobilenet = (rank == IMAGE_RANK)
                .then(|| MobileNetV2::load(&ModelFile::open(&models.mobilenet)?, device))
                .transpose()?;
            let minilm = (rank == text_rank)
                .then(|| BertEmbedder::open(&models.minilm, device))
                .transpose()?;
            Ok((mobilenet, minilm))
        })();
        agreed(comm, "open the models", opened)?
    };
    let classes = agreed(
        comm,
        "classify the photos",
        mobilenet
            .as_ref()
            .map_or(Ok(Vec::new()), |m| classify(m, images)),
    )?;
    // The texts to embed, from the image rank to every rank.
    let mut bytes = serde_json::to_vec(&Batches(text_batches(&classes, queries)))
        .map_err(|e| distributed("send the texts", e.to_string()))?;
    comm.broadcast(IMAGE_RANK, &mut bytes)?;
    let batches = serde_json::from_slice::<Batches>(&bytes)
        .map(|b| b.0)
        .map_err(|e| distributed("receive the texts", e.to_string()));
    let batches = agreed(comm, "receive the texts", batches)?;
    let mine = match &minilm {
        Some(minilm) => batches
            .iter()
            .map(|texts| Ok(minilm.embed(texts)?.sentence_embeddings))
            .collect::<Result<Vec<_>>>()
            .map(|e| f32_bytes(e.iter().flatten().flatten())),
        None => Ok(Vec::new()),
    };
    let mine = agreed(comm, "embed the texts", mine)?;
    let gathered = comm.all_gather(&mine)?;
    if rank != IMAGE_RANK {
        return Ok(None);
    }
    let values = gathered
        .get(text_rank)
        .ok_or_else(|| distributed("gather the embeddings", "no text rank"))?;
    let embedded = split_batches(&batches, values)?;
    fuse(device, images, classes, queries, embedded).map(Some)
}

/// The texts of a search, in the batches MiniLM embeds them in: each photo's class names, then
/// the queries.
#[derive(Serialize, Deserialize)]
struct Batches(Vec<Vec<String>>);

fn text_batches<Q: AsRef<str>>(classes: &[Vec<Class>], queries: &[Q]) -> Vec<Vec<String>> {
    classes
        .iter()
        .map(|cs| cs.iter().map(|c| c.label.clone()).collect())
        .chain(std::iter::once(
            queries.iter().map(|q| q.as_ref().to_string()).collect(),
        ))
        .collect()
}

fn classify<P: AsRef<Path>>(mobilenet: &MobileNetV2, images: &[P]) -> Result<Vec<Vec<Class>>> {
    let labels = imagenet_labels();
    let pre = ImagePreprocess::imagenet();
    images
        .iter()
        .map(|path| {
            let x = pre.load(path.as_ref())?.reshape(vec![1, 3, 224, 224])?;
            let logits = mobilenet.forward(&x)?.to_f32_vec()?;
            Ok(top_k(&logits, &labels, TOP))
        })
        .collect()
}

/// Each photo's class embeddings weighted by their probabilities, fused on `device`
/// (sum_c p_c * e_c, in class order), and every query's cosine with every photo. `embedded`:
/// the embeddings of [`text_batches`].
fn fuse<P: AsRef<Path>, Q: AsRef<str>>(
    device: &Device,
    images: &[P],
    classes: Vec<Vec<Class>>,
    queries: &[Q],
    mut embedded: Vec<Vec<Vec<f32>>>,
) -> Result<Search> {
    let query_embeddings = embedded.pop().unwrap_or_default();
    let mut photos = Vec::with_capacity(images.len());
    for ((path, classes), embedded) in images.iter().zip(classes).zip(embedded) {
        let probs: Vec<f32> = classes.iter().map(|c| c.prob).collect();
        let fusion = LateFusion::new(
            Tensor::from_f32("class probabilities", vec![probs.len()], &probs)?
                .to_device(device)?,
        )?;
        let embedded = embedded
            .iter()
            .map(|e| Tensor::from_f32("class embedding", vec![1, e.len()], e)?.to_device(device))
            .collect::<Result<Vec<_>>>()?;
        let embedding = fusion
            .fuse(&embedded.iter().collect::<Vec<_>>())?
            .to_f32_vec()?;
        photos.push(Photo {
            path: path.as_ref().to_path_buf(),
            classes,
            embedding,
        });
    }
    let scores = query_embeddings
        .iter()
        .map(|q| photos.iter().map(|p| cosine(q, &p.embedding)).collect())
        .collect();
    Ok(Search {
        photos,
        queries: queries.iter().map(|q| q.as_ref().to_string()).collect(),
        scores,
    })
}

fn f32_bytes<'a>(values: impl Iterator<Item = &'a f32>) -> Vec<u8> {
    values.flat_map(|v| v.to_le_bytes()).collect()
}

/// The gathered embeddings (f32 LE, batch after batch) cut back into `batches`' shapes.
fn split_batches(batches: &[Vec<String>], bytes: &[u8]) -> Result<Vec<Vec<Vec<f32>>>> {
    let texts: usize = batches.iter().map(Vec::len).sum();
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if texts == 0 || !bytes.len().is_multiple_of(4) || !values.len().is_multiple_of(texts) {
        return Err(distributed(
            "gather the embeddings",
            format!("{} bytes for {texts} texts", bytes.len()),
        ));
    }
    let dim = values.len() / texts;
    let mut rows = values.chunks_exact(dim).map(<[f32]>::to_vec);
    Ok(batches
        .iter()
        .map(|b| rows.by_ref().take(b.len()).collect())
        .collect())
}

fn distributed(during: &str, reason: impl Into<String>) -> Error {
    Error::Distributed {
        during: during.to_string(),
        reason: reason.into(),
    }
}
