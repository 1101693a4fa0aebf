//! torchvision's MobileNetV2 (`torchvision.models.mobilenet_v2`, width 1.0, 1000 classes) from its
//! state dict (`mobilenet_v2-b0353104.pth`, read by the PyTorch reader), in eval mode.
//!
//! Load-time transform: every BatchNorm is folded into the convolution before it
//! (`w' = w * g`, `b' = beta - mean * g`, `g = gamma / sqrt(running_var + eps)`, eps 1e-5,
//! computed in f64 and rounded once to f32). [`MobileNetV2::load_transforms`] lists each fold,
//! and they are recorded as `load_transform` entries of [`crate::provenance`] records when the
//! folded weights are saved.
//!
//! Forward, on the device of the weights: the stem (3x3 stride-2 conv, ReLU6), 17 inverted
//! residual blocks (1x1 expand + ReLU6, 3x3 depthwise + ReLU6, 1x1 project, a residual add when
//! the stride is 1 and the channels match), a 1x1 conv to 1280 + ReLU6, global average pooling
//! and the linear classifier (dropout is the identity in eval mode).

use crate::error::{Error, Result};
use crate::formats::ModelFile;
use crate::ops::conv::{self, Conv2d};
use crate::ops::{elementwise, matmul};
use crate::provenance::Transform;
use crate::Device;
use crate::Tensor;

/// torchvision's `inverted_residual_setting`: expansion t, output channels c, repeats n,
/// stride s of the first repeat.
const SETTING: [(usize, usize, usize, usize); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];
/// `nn.BatchNorm2d`'s default.
const BN_EPS: f64 = 1e-5;

/// A convolution with its BatchNorm folded in, and whether ReLU6 follows.
struct ConvUnit {
    weight: Tensor,
    bias: Tensor,
    conv: Conv2d,
    relu6: bool,
}

struct Block {
    units: Vec<ConvUnit>,
    residual: bool,
}

/// MobileNetV2 with folded weights on a device.
pub struct MobileNetV2 {
    device: Device,
    blocks: Vec<Block>,
    classifier_weight: Tensor,
    classifier_bias: Tensor,
    transforms: Vec<Transform>,
}

impl MobileNetV2 {
    /// Read the state dict in `file`, fold every BatchNorm and move the weights to `device`.
    pub fn load(file: &ModelFile, device: &Device) -> Result<MobileNetV2> {
        let mut transforms = Vec::new();
        let mut unit = |conv_name: &str, bn_name: &str, conv: Conv2d, relu6: bool| {
            let (weight, bias) = fold(file, conv_name, bn_name)?;
            transforms.push(Transform::LoadTransform {
                description: format!("batch norm {bn_name} folded into {conv_name} (eps {BN_EPS})"),
            });
            Ok::<_, Error>(ConvUnit {
                weight: weight.to_device(device)?,
                bias: bias.to_device(device)?,
                conv,
                relu6,
            })
        };
        let dense = |stride: usize, padding: usize| Conv2d {
            stride,
            padding,
            groups: 1,
        };
        let mut blocks = vec![Block {
            units: vec![unit("features.0.0", "features.0.1", dense(2, 1), true)?],
            residual: false,
        }];
        let (mut c_in, mut index) = (32usize, 1usize);
        for (t, c, n, s) in SETTING {
            for r in 0..n {
                let stride = if r == 0 { s } else { 1 };
                let hidden = c_in * t;
                let p = format!("features.{index}.conv");
                let mut units = Vec::new();
                let mut j = 0;
                if t != 1 {
                    units.push(unit(
                        &format!("{p}.0.0"),
                        &format!("{p}.0.1"),
                        dense(1, 0),
                        true,
                    )?);
                    j = 1;
                }
                let depthwise = Conv2d {
                    stride,
                    padding: 1,
                    groups: hidden,
                };
                units.push(unit(
                    &format!("{p}.{j}.0"),
                    &format!("{p}.{j}.1"),
                    depthwise,
                    true,
                )?);
                units.push(unit(
                    &format!("{p}.{}", j + 1),
                    &format!("{p}.{}", j + 2),
                    dense(1, 0),
                    false,
                )?);
                blocks.push(Block {
                    units,
                    residual: stride == 1 && c_in == c,
                });
                c_in = c;
                index += 1;
            }
        }
        blocks.push(Block {
            units: vec![unit(
                &format!("features.{index}.0"),
                &format!("features.{index}.1"),
                dense(1, 0),
                true,
            )?],
            residual: false,
        });
        Ok(MobileNetV2 {
            device: device.clone(),
            blocks,
            classifier_weight: device.load(file, "classifier.1.weight")?,
            classifier_bias: device.load(file, "classifier.1.bias")?,
            transforms,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// What was done to the weights when they were loaded (one entry per folded BatchNorm).
    pub fn load_transforms(&self) -> &[Transform] {
        &self.transforms
    }

    /// Logits `[n, 1000]` of a preprocessed batch `[n, 3, 224, 224]` on the model's device.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        matmul::linear(
            &self.features(x)?,
            &self.classifier_weight,
            Some(&self.classifier_bias),
        )
    }

    /// The pooled features `[n, 1280]` the classifier reads (after the last ReLU6 and global
    /// average pooling) of a preprocessed batch `[n, 3, h, w]`, on the model's device.
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.to_device(&self.device)?;
        for block in &self.blocks {
            let input = if block.residual {
                Some(x.to_device(&self.device)?)
            } else {
                None
            };
            for u in &block.units {
                x = conv::conv2d(&x, &u.weight, Some(&u.bias), u.conv)?;
                if u.relu6 {
                    x = elementwise::relu6(&x)?;
                }
            }
            if let Some(input) = input {
                x = elementwise::add(&x, &input)?;
            }
        }
        conv::avg_pool_global(&x)
    }
}

/// The f32 values of a tensor of `file` (any float dtype the CPU twins convert).
fn values(file: &ModelFile, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let t = Device::Cpu.load(file, name)?;
    Ok((t.shape().dims().to_vec(), t.to_f32_vec()?))
}

/// Conv `conv_name` (no bias, as torchvision's) with BatchNorm `bn_name` folded in: CPU tensors.
fn fold(file: &ModelFile, conv_name: &str, bn_name: &str) -> Result<(Tensor, Tensor)> {
    let (dims, w) = values(file, &format!("{conv_name}.weight"))?;
    let stat = |s: &str| values(file, &format!("{bn_name}.{s}")).map(|(_, v)| v);
    let (gamma, beta, mean, var) = (
        stat("weight")?,
        stat("bias")?,
        stat("running_mean")?,
        stat("running_var")?,
    );
    let out_c = dims.first().copied().unwrap_or(0);
    if [&gamma, &beta, &mean, &var]
        .iter()
        .any(|v| v.len() != out_c)
        || out_c == 0
    {
        return Err(Error::BadModel {
            path: file.path().to_path_buf(),
            reason: format!("{bn_name} does not have one value per output channel of {conv_name}"),
        });
    }
    let per = w.len() / out_c;
    let mut folded = Vec::with_capacity(w.len());
    let mut bias = Vec::with_capacity(out_c);
    for o in 0..out_c {
        let g = gamma[o] as f64 / (var[o] as f64 + BN_EPS).sqrt();
        folded.extend(
            w[o * per..(o + 1) * per]
                .iter()
                .map(|&v| (v as f64 * g) as f32),
        );
        bias.push((beta[o] as f64 - mean[o] as f64 * g) as f32);
    }
    Ok((
        Tensor::from_f32(&format!("{conv_name}.weight"), dims, &folded)?,
        Tensor::from_f32(&format!("{conv_name}.bias"), vec![out_c], &bias)?,
    ))
}
