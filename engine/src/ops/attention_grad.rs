//! The [`Path::CpuGrad`] form of [`super::attention`]: one op over (q, k, v) with a hand-written
//! backward. The composite form is about fifteen graph nodes (head splits, scaling, two matmuls,
//! the softmax's five), each with a gradient that candle allocates as zeros and adds into; here
//! the forward keeps nothing but its inputs and the backward recomputes the probabilities.
//!
//! Per batch item and head, with `S = s·Q·Kᵀ` (s = D^-½), `P = softmax(S)` over keys, `O = P·V`:
//! `dV = Pᵀ·dO`, `dP = dO·Vᵀ`, `dS = P ⊙ (dP − rowsum(dP ⊙ P))`, `dQ = s·dS·K`, `dK = s·dSᵀ·Q`.
//!
//! [`Path::CpuGrad`]: super::Path::CpuGrad

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::{gemm_acc_serial, with_f32, SendPtr};

/// `[B, T, H·D]` data with unit stride along the features (a `narrow` of a wider tensor is fine).
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    offset: usize,
    batch_stride: usize,
    row_stride: usize,
    rows: usize,
}

impl<'a> View<'a> {
    fn new(data: &'a [f32], l: &Layout, name: &str) -> Result<Self> {
        let (b, t, hd) = l.shape().dims3()?;
        let st = l.stride();
        if st[2] != 1 && hd > 1 {
            candle_core::bail!("{name}: the features must be contiguous");
        }
        let last = l.start_offset() + (b.max(1) - 1) * st[0] + (t.max(1) - 1) * st[1] + hd;
        if data.len() < last {
            candle_core::bail!("{name}: the layout reaches past the data");
        }
        Ok(Self { data, offset: l.start_offset(), batch_stride: st[0], row_stride: st[1], rows: t })
    }

    /// Pointer to head `h`'s first feature of item `b`'s first row.
    fn head(&self, b: usize, h: usize, d: usize) -> *const f32 {
        self.data[self.offset + b * self.batch_stride + h * d..].as_ptr()
    }
}

/// `p + i`, taking the whole `SendPtr` into a closure (a closure naming `p.0` would capture the
/// bare pointer, which is not `Sync`).
///
/// # Safety
/// `i` must lie inside the buffer `p` points into.
unsafe fn at(p: &SendPtr, i: usize) -> *mut f32 {
    p.0.add(i)
}

pub struct AttentionOp {
    pub heads: usize,
}

impl AttentionOp {
    fn dims(&self, q: &Layout, k: &Layout) -> Result<(usize, usize, usize, usize)> {
        let (b, _, hd) = q.shape().dims3()?;
        if self.heads == 0 || hd % self.heads != 0 || k.shape().dims3()?.2 != hd || k.shape().dims3()?.0 != b {
            candle_core::bail!("attention: {hd} features do not split into {} heads, or q and k disagree", self.heads);
        }
        Ok((b, self.heads, hd / self.heads, hd))
    }

    /// `P = softmax(s·Q·Kᵀ)` of item `b`, head `h`, as `[Tq, Tk]` rows.
    fn probabilities(q: &View, k: &View, b: usize, h: usize, d: usize) -> Vec<f32> {
        let (tq, tk) = (q.rows, k.rows);
        let mut p = vec![0f32; tq * tk];
        // SAFETY: Q's rows (stride row_stride) and K's rows hold d features from these
        // pointers (checked in View::new); p is tq × tk.
        unsafe {
            gemm_acc_serial(tq, tk, d, p.as_mut_ptr(), tk as isize, 1, q.head(b, h, d), q.row_stride as isize, 1, k.head(b, h, d), 1, k.row_stride as isize);
        }
        let scale = (d as f32).powf(-0.5);
        for row in p.chunks_mut(tk.max(1)) {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x * scale));
            let mut sum = 0f32;
            for x in row.iter_mut() {
                *x = (*x * scale - max).exp();
                sum += *x;
            }
            row.iter_mut().for_each(|x| *x /= sum);
        }
        p
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "attention-grad"
    }

    fn cpu_fwd(&self, sq: &CpuStorage, lq: &Layout, sk: &CpuStorage, lk: &Layout, sv: &CpuStorage, lv: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, heads, d, hd) = self.dims(lq, lk)?;
        let q = View::new(sq.as_slice::<f32>()?, lq, "attention q")?;
        let k = View::new(sk.as_slice::<f32>()?, lk, "attention k")?;
        let v = View::new(sv.as_slice::<f32>()?, lv, "attention v")?;
        if lv.dims() != lk.dims() {
            candle_core::bail!("attention: k and v must have the same shape");
        }
        let tq = q.rows;
        let mut out = vec![0f32; b * tq * hd];
        let dst = SendPtr(out.as_mut_ptr());
        (0..b * heads).into_par_iter().for_each(|bh| {
            let (bi, h) = (bh / heads, bh % heads);
            let p = Self::probabilities(&q, &k, bi, h, d);
            // SAFETY: each (item, head) writes its own columns h·d.. of item bi's rows of `out`
            // (b·tq·hd values); V's rows hold d features from the head's pointer.
            unsafe {
                let o = at(&dst, bi * tq * hd + h * d);
                gemm_acc_serial(tq, d, k.rows, o, hd as isize, 1, p.as_ptr(), k.rows as isize, 1, v.head(bi, h, d), v.row_stride as isize, 1);
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, tq, hd))))
    }

    fn bwd(&self, q: &Tensor, k: &Tensor, v: &Tensor, _out: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, k, v, g) = (q.contiguous()?, k.contiguous()?, v.contiguous()?, g.contiguous()?);
        let (b, heads, d, hd) = self.dims(q.layout(), k.layout())?;
        let (tq, tk) = (q.dim(1)?, k.dim(1)?);
        let (mut dq, mut dk, mut dv) = (vec![0f32; b * tq * hd], vec![0f32; b * tk * hd], vec![0f32; b * tk * hd]);
        with_f32(&q, |qs| {
            with_f32(&k, |ks| {
                with_f32(&v, |vs| {
                    with_f32(&g, |gs| {
                        let view = |s, t: &Tensor, name| View::new(s, t.layout(), name);
                        let (qv, kv, vv, gv) = (view(qs, &q, "q")?, view(ks, &k, "k")?, view(vs, &v, "v")?, view(gs, &g, "dO")?);
                        let (pq, pk, pv) = (SendPtr(dq.as_mut_ptr()), SendPtr(dk.as_mut_ptr()), SendPtr(dv.as_mut_ptr()));
                        let scale = (d as f32).powf(-0.5);
                        (0..b * heads).into_par_iter().for_each(|bh| {
                            let (bi, h) = (bh / heads, bh % heads);
                            let mut p = Self::probabilities(&qv, &kv, bi, h, d);
                            let mut dp = vec![0f32; tq * tk];
                            // SAFETY: as in the forward; each (item, head) writes its own columns
                            // of dq, dk and dv; p and dp are tq × tk.
                            unsafe {
                                // dV = Pᵀ·dO
                                gemm_acc_serial(tk, d, tq, at(&pv, bi * tk * hd + h * d), hd as isize, 1, p.as_ptr(), 1, tk as isize, gv.head(bi, h, d), hd as isize, 1);
                                // dP = dO·Vᵀ
                                gemm_acc_serial(tq, tk, d, dp.as_mut_ptr(), tk as isize, 1, gv.head(bi, h, d), hd as isize, 1, vv.head(bi, h, d), 1, hd as isize);
                            }
                            // dS·s into p
                            for (pr, dr) in p.chunks_mut(tk.max(1)).zip(dp.chunks(tk.max(1))) {
                                let dot: f32 = pr.iter().zip(dr).map(|(a, b)| a * b).sum();
                                pr.iter_mut().zip(dr).for_each(|(p, &dp)| *p = *p * (dp - dot) * scale);
                            }
                            unsafe {
                                // dQ = s·dS·K, dK = s·dSᵀ·Q
                                gemm_acc_serial(tq, d, tk, at(&pq, bi * tq * hd + h * d), hd as isize, 1, p.as_ptr(), tk as isize, 1, kv.head(bi, h, d), hd as isize, 1);
                                gemm_acc_serial(tk, d, tq, at(&pk, bi * tk * hd + h * d), hd as isize, 1, p.as_ptr(), 1, tk as isize, qv.head(bi, h, d), hd as isize, 1);
                            }
                        });
                        Ok(())
                    })
                })
            })
        })?;
        let dev = q.device();
        let grad = |data: Vec<f32>, t: usize, of: &Tensor| -> Result<Option<Tensor>> {
            Ok(if of.track_op() { Some(Tensor::from_vec(data, (b, t, hd), dev)?) } else { None })
        };
        Ok((grad(dq, tq, &q)?, grad(dk, tk, &k)?, grad(dv, tk, &v)?))
    }
}
