//! Image + text search with two separately trained real models, joined by late fusion (this is
//! not CLIP): MobileNetV2 names each photo's most likely ImageNet classes; all-MiniLM-L6-v2
//! embeds those class names and the text queries; a photo is represented by the embeddings of
//! its top classes weighted by their probabilities (late fusion: `mlmf::fusion::late::LateFusion`
//! with the probabilities as its weights, on the GPU), and photos and queries are ranked by
//! cosine. Both models and the fusion run on the GPU (lavapipe on machines without one).
//!
//! `bash scripts/demo.sh`, or
//! `cargo run --release --example image_text_search -- [--json] [--html OUT] [--image PATH]...
//! [--query TEXT]... [--distributed]`. Without images it uses the scikit-image sample photos the
//! fetch script caches; without queries, a few defaults. It prints the rankings (or JSON with
//! `--json`) and writes an HTML contact sheet (default `image_text_search.html`).
//!
//! `--distributed` (feature `mpi`, under `mpirun -np 2`): MobileNetV2 on rank 0, MiniLM on rank
//! 1, the text embeddings gathered on rank 0, which fuses, prints and writes the sheet
//! (`mlmf::multimodal::search::search_distributed`).

use std::path::{Path, PathBuf};

use mlmf::checkpoint::AtomicFile;
use mlmf::models::cache_dir;
use mlmf::multimodal::search::{self, ranked, Photo, Search, SearchModels};
use mlmf::{Device, Result};

const PHOTOS: [&str; 6] = [
    "chelsea.png",
    "coffee.png",
    "astronaut.png",
    "motorcycle_left.png",
    "rocket.jpg",
    "camera.png",
];
const QUERIES: [&str; 5] = [
    "a cat",
    "a cup of coffee",
    "a motorbike",
    "a rocket launch into space",
    "a man holding a camera",
];

struct Args {
    json: bool,
    distributed: bool,
    html: PathBuf,
    images: Vec<PathBuf>,
    queries: Vec<String>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        json: false,
        distributed: false,
        html: PathBuf::from("image_text_search.html"),
        images: Vec::new(),
        queries: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "--json" => a.json = true,
            "--distributed" => a.distributed = true,
            "--html" => a.html = value("--html")?.into(),
            "--image" => a.images.push(value("--image")?.into()),
            "--query" => a.queries.push(value("--query")?),
            other => {
                return Err(format!(
                "unknown argument {other}; expected --json, --html OUT, --image PATH, --query TEXT, --distributed"
            ))
            }
        }
    }
    if a.images.is_empty() {
        let dir = cache_dir().join("skimage-data");
        a.images = PHOTOS.iter().map(|p| dir.join(p)).collect();
    }
    if a.queries.is_empty() {
        a.queries = QUERIES.iter().map(|q| q.to_string()).collect();
    }
    Ok(a)
}

/// The search in this process, or across MPI ranks with `--distributed`; `None` on ranks
/// other than 0.
fn run(args: &Args) -> Result<Option<Search>, Box<dyn std::error::Error>> {
    let device = Device::gpu()?;
    let models = SearchModels::cached();
    if !args.distributed {
        eprintln!("device: {}", device.describe());
        return Ok(Some(search::search(
            &models,
            &device,
            &args.images,
            &args.queries,
        )?));
    }
    #[cfg(feature = "mpi")]
    {
        use mlmf::shard::Comm;
        let comm = mlmf::shard::MpiComm::init()?;
        eprintln!(
            "rank {} of {}: device {}",
            comm.rank(),
            comm.size(),
            device.describe()
        );
        Ok(search::search_distributed(
            &comm,
            &models,
            &device,
            &args.images,
            &args.queries,
        )?)
    }
    #[cfg(not(feature = "mpi"))]
    Err("--distributed needs the example built with --features mpi".into())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let Some(found) = run(&args)? else {
        return Ok(());
    };
    let Search { photos, scores, .. } = &found;
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };

    if args.json {
        let by_query: Vec<serde_json::Value> = args
            .queries
            .iter()
            .zip(scores)
            .map(|(q, row)| {
                let photos: Vec<serde_json::Value> = ranked(row)
                    .into_iter()
                    .map(|p| serde_json::json!({"image": photos[p].path.display().to_string(), "score": row[p]}))
                    .collect();
                serde_json::json!({"query": q, "images": photos})
            })
            .collect();
        let by_image: Vec<serde_json::Value> = photos
            .iter()
            .enumerate()
            .map(|(p, photo)| {
                let column: Vec<f32> = scores.iter().map(|row| row[p]).collect();
                let queries: Vec<serde_json::Value> = ranked(&column)
                    .into_iter()
                    .map(|q| serde_json::json!({"query": args.queries[q], "score": column[q]}))
                    .collect();
                serde_json::json!({"image": photo.path.display().to_string(), "classes": photo.classes, "queries": queries})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"by_query": by_query, "by_image": by_image})
        );
    } else {
        println!("Late fusion of MobileNetV2 (ImageNet classes) and all-MiniLM-L6-v2 (text); not CLIP.\n");
        for (q, row) in args.queries.iter().zip(scores) {
            println!("query: {q}");
            for p in ranked(row) {
                println!("  {:.3}  {}", row[p], name(&photos[p].path));
            }
        }
        println!();
        for (p, photo) in photos.iter().enumerate() {
            let column: Vec<f32> = scores.iter().map(|row| row[p]).collect();
            let best = ranked(&column)[0];
            let top: Vec<String> = photo
                .classes
                .iter()
                .take(3)
                .map(|c| format!("{} {:.2}", c.label, c.prob))
                .collect();
            println!(
                "{:<22} classes: {:<60} best query: {} ({:.3})",
                name(&photo.path),
                top.join(", "),
                args.queries[best],
                column[best]
            );
        }
    }
    write_html(&args.html, photos, &args.queries, scores)?;
    eprintln!("contact sheet: {}", args.html.display());
    Ok(())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One card per photo: the image, its top classes with probabilities, and every query's score.
fn write_html(out: &Path, photos: &[Photo], queries: &[String], scores: &[Vec<f32>]) -> Result<()> {
    let mut html = String::from(
        "<!doctype html><meta charset=\"utf-8\"><title>mlmf image+text search</title>\n\
         <style>body{font-family:sans-serif}.card{display:inline-block;vertical-align:top;\
         width:260px;margin:8px;padding:8px;border:1px solid #ccc}img{width:256px}\
         td{padding:0 6px}</style>\n<h1>mlmf image+text search</h1>\n<p>Late fusion of two \
         separately trained models (MobileNetV2 ImageNet classes embedded by all-MiniLM-L6-v2, \
         weighted by class probability); not CLIP. Scores are cosine similarities.</p>\n",
    );
    for (p, photo) in photos.iter().enumerate() {
        let src = std::fs::canonicalize(&photo.path).unwrap_or_else(|_| photo.path.clone());
        html.push_str(&format!(
            "<div class=\"card\"><img src=\"file://{}\"><br><b>{}</b><table>",
            escape(&src.display().to_string()),
            escape(&photo.path.display().to_string())
        ));
        for c in &photo.classes {
            html.push_str(&format!(
                "<tr><td>{}</td><td>{:.3}</td></tr>",
                escape(&c.label),
                c.prob
            ));
        }
        html.push_str("</table><table>");
        for (q, row) in queries.iter().zip(scores) {
            html.push_str(&format!(
                "<tr><td>{}</td><td>{:.3}</td></tr>",
                escape(q),
                row[p]
            ));
        }
        html.push_str("</table></div>\n");
    }
    let mut file = AtomicFile::create(out)?;
    file.write_all(html.as_bytes())?;
    file.commit()
}
