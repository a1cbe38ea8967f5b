import os, sys, time; os.environ.setdefault("TVM_NUM_THREADS", "2"); sys.path.insert(0, '/work/main')
import numpy as np, tvm
from shadowattn_tvm.block import *
from shadowattn_tvm.ops import quantize as Q, pilot as P, topk as TK, sparse_attention as SA, reference as ref
from shadowattn_tvm.targets import cpu_kernels as cpu
B,H,HKV,S,D = 1,14,2,int(sys.argv[1]) if len(sys.argv)>1 else 256,64
blk = AttentionBlock(0,H,HKV,D,CausalMode.BOTTOM_RIGHT,D**-0.5,"float32")
rng = np.random.default_rng(0)
q = rng.standard_normal((B,H,S,D)).astype("float32"); k = rng.standard_normal((B,HKV,S,D)).astype("float32"); v = rng.standard_normal((B,HKV,S,D)).astype("float32")
dev = tvm.cpu()
# MCPU=native (default: the host CPU LLVM reports), MCPU=generic (plain x86-64, SSE2), or a CPU name
_mcpu = os.environ.get("MCPU", "native")
_tgt = {"kind": "llvm", "num-cores": 2}
if _mcpu == "native":
    _tgt["mcpu"] = tvm.target.codegen.llvm_get_system_cpu()
elif _mcpu != "generic":
    _tgt["mcpu"] = _mcpu
TARGET = tvm.target.Target(_tgt)
TARGET.__enter__()  # the kernel generators read their vector widths from the current target
print("target", _tgt)
def build(f):
    if f.attrs is None or "global_symbol" not in f.attrs:  # ops leave naming to the Relax pass
        f = f.with_attr("global_symbol", "main")
    return tvm.compile(f, target=TARGET)

CPU = {}  # kernel -> best process CPU time (all threads) of one call, ms: robust on a shared box
def t(fn, *args, n=int(os.environ.get("REPS", 5))):
    fn(*args); best = cpu = 1e9
    for _ in range(n):
        st, sc = time.perf_counter(), time.process_time(); fn(*args)
        best = min(best, time.perf_counter() - st); cpu = min(cpu, time.process_time() - sc)
    CPU[len(CPU)] = cpu * 1e3
    return best * 1e3
tv = lambda a: tvm.runtime.tensor(a, dev)
amax = build(cpu.schedule_absmax(Q.absmax_scale((B,H,S,D),"float32")))
qs = tvm.runtime.empty((H,),"float32",dev); amax(tv(q), qs)
np.testing.assert_allclose(qs.numpy(), ref.absmax_scale(q))
ks_np = ref.absmax_scale(k)
quant = build(cpu.schedule_quantize(Q.quantize((B,H,S,D),"float32")))
quant_t = build(cpu.schedule_quantize(Q.quantize((B,HKV,S,D),"float32", transpose=True)))
q8 = tvm.runtime.empty((B,H,S,D),"int8",dev); quant(tv(q), qs, q8)
k8t = tvm.runtime.empty((B,HKV,D,S),"int8",dev); quant_t(tv(k), tv(ks_np), k8t)
assert (q8.numpy() == ref.quantize(q, qs.numpy())).all()
assert (k8t.numpy().transpose(0,1,3,2) == ref.quantize(k, ks_np)).all()
print("absmax ms %.3f  quantize ms %.3f  quantize_t ms %.3f" % (t(amax, tv(q), qs), t(quant, tv(q), qs, q8), t(quant_t, tv(k), tv(ks_np), k8t)))
vis = ref.visible(blk, S, S)[0, 0]
pil = build(cpu.schedule_pilot(P.pilot_scores(blk, (B,H,S,D), S)))
sc = tvm.runtime.empty((B,H,S,S),"int32",dev); pil(q8, k8t, sc)
scr = ref.pilot_scores(q8.numpy(), ref.quantize(k, ks_np), blk)
assert (sc.numpy()[..., vis] == scr[..., vis]).all()   # the causally masked part is undefined
tp = t(pil, q8, k8t, sc)
print("pilot ms %.2f  (%.1f GMAC/s on the visible half)" % (tp, H*D*vis.sum()/tp/1e6))
kmin=16; ratios = np.full(H, 0.2); kmax = max_keep_count(0.2, S, kmin)
tk = build(TK.topk_indices(blk, kmin))
idx = tvm.runtime.empty((B,H,S,kmax),"int32",dev); tk(sc, tv(ratios), idx)
idr = ref.topk_indices(scr, ratios, blk, kmin, kmax) if S <= 512 else None
if idr is not None: assert (idx.numpy()==idr).all(), (idx.numpy()[0,0,:4], idr[0,0,:4])
tt = t(tk, sc, tv(ratios), idx)
print("topk ms %.2f  (%.2f GB/s of visible scores)" % (tt, H*4*vis.sum()/tt/1e6))
sp = build(cpu.schedule_sparse_attention(SA.sparse_attention(blk, (B,H,S,D), S, D, kmax)))
o = tvm.runtime.empty((B,H,S,D),"float32",dev); sp(tv(q),tv(k),tv(v),idx,o)
np.testing.assert_allclose(o.numpy(), ref.sparse_attention(q,k,v,idx.numpy(),blk), rtol=1e-4, atol=1e-4)
ts = t(sp, tv(q),tv(k),tv(v),idx,o)
nsel = int((idx.numpy() >= 0).sum())
print("sparse ms %.2f  (%.1f GFLOP/s, %d selected keys)" % (ts, nsel*4*D/ts/1e6, nsel))
print("topk+sparse ms %.2f" % (tt + ts))
print("process CPU ms per call (all threads, TVM's idle workers spin too): pilot %.2f topk %.2f sparse %.2f"
      % (CPU[3], CPU[4], CPU[5]))
# the CPU pilot's int16 scores (s32 >> score_shift) and top-k over them
pil16 = build(cpu.schedule_pilot(P.pilot_scores(blk, (B,H,S,D), S, out_dtype="int16")))
sc16 = tvm.runtime.empty((B,H,S,S),"int16",dev); pil16(q8, k8t, sc16)
assert (sc16.numpy()[..., vis] == ref.pilot_scores(q8.numpy(), ref.quantize(k, ks_np), blk, "int16")[..., vis]).all()
tk16 = build(TK.topk_indices(blk, kmin, score_dtype="int16"))
idx16 = tvm.runtime.empty((B,H,S,kmax),"int32",dev); tk16(sc16, tv(ratios), idx16)
if S <= 512: assert (idx16.numpy() == ref.topk_indices(sc16.numpy(), ratios, blk, kmin, kmax)).all()
print("pilot int16 ms %.2f  topk int16 ms %.2f" % (t(pil16, q8, k8t, sc16), t(tk16, sc16, tv(ratios), idx16)))
# group mode: one selection per KV head and query row
from shadowattn_tvm.ops import topk_group as TG
tkg = build(TG.topk_group_indices(blk, kmin))
idxg = tvm.runtime.empty((B,HKV,S,kmax),"int32",dev); rg = tv(np.full(HKV, 0.2)); tk_s = tv(ks_np)
tkg(sc, rg, qs, tk_s, idxg)
if S <= 512: assert (idxg.numpy() == ref.topk_group_indices(scr, np.full(HKV, 0.2), blk, kmin, kmax, qs.numpy(), ks_np)).all()
spg = build(SA.sparse_attention_group(blk, (B,H,S,D), S, D, kmax))
og = tvm.runtime.empty((B,H,S,D),"float32",dev); spg(tv(q),tv(k),tv(v),idxg,og)
np.testing.assert_allclose(og.numpy(), ref.sparse_attention_group(q,k,v,idxg.numpy(),blk), rtol=1e-4, atol=1e-4)
print("group topk ms %.2f  group sparse ms %.2f" % (t(tkg, sc, rg, qs, tk_s, idxg), t(spg, tv(q),tv(k),tv(v),idxg,og)))
# masked variant
mask = np.where(rng.random((1,1,S,S))<0.1, -1e9, rng.standard_normal((1,1,S,S))*0.1).astype("float32")
blk2 = AttentionBlock(0,H,HKV,D,CausalMode.NONE,D**-0.5,"float32", has_mask=True)
pil2 = build(cpu.schedule_pilot(P.pilot_scores(blk2, (B,H,S,D), S)))
sc2 = tvm.runtime.empty((B,H,S,S),"int32",dev); pil2(q8, k8t, sc2)
assert (sc2.numpy() == scr).all()
tk2 = build(TK.topk_indices(blk2, kmin, (1,1,S,S)))
idx2 = tvm.runtime.empty((B,H,S,kmax),"int32",dev); tk2(sc2, tv(ratios), qs, tv(ks_np), tv(mask), idx2)
print("masked topk ms %.2f" % t(tk2, sc2, tv(ratios), qs, tv(ks_np), tv(mask), idx2))
sp2 = build(cpu.schedule_sparse_attention(SA.sparse_attention(blk2, (B,H,S,D), S, D, kmax, (1,1,S,S))))
o2 = tvm.runtime.empty((B,H,S,D),"float32",dev); sp2(tv(q),tv(k),tv(v),idx2,tv(mask),o2)
if S <= 512:
    idr2 = ref.topk_indices(scr, ratios, blk2, kmin, kmax, mask=mask, q_scale=qs.numpy(), k_scale=ks_np)
    print("mask topk mismatch rows", (idx2.numpy()!=idr2).any(-1).sum())
    np.testing.assert_allclose(o2.numpy(), ref.sparse_attention(q,k,v,idx2.numpy(),blk2,mask), rtol=1e-4, atol=1e-4)
print("masked sparse ms %.2f" % t(sp2, tv(q),tv(k),tv(v),idx2,tv(mask),o2))
print("ok")
# symbolic sequence length: build once with n = Var, run on 100 tokens (and 37, ragged tiles)
from shadowattn_tvm._compat import tirx
n = tirx.Var("n", "int64")
kmax_n = max_keep_count(0.2, n, kmin)
sym = dict(
    amax=build(cpu.schedule_absmax(Q.absmax_scale((B,H,n,D),"float32"))),
    quant=build(cpu.schedule_quantize(Q.quantize((B,H,n,D),"float32"))),
    quant_t=build(cpu.schedule_quantize(Q.quantize((B,HKV,n,D),"float32", transpose=True))),
    pil=build(cpu.schedule_pilot(P.pilot_scores(blk, (B,H,n,D), n))),
    tk=build(TK.topk_indices(blk, kmin)),
    sp=build(cpu.schedule_sparse_attention(SA.sparse_attention(blk, (B,H,n,D), n, D, kmax_n))),
)
for Sn in (100, 37):
    qn, kn, vn = q[:, :, :Sn].copy(), k[:, :, :Sn].copy(), v[:, :, :Sn].copy()
    qsn = tvm.runtime.empty((H,),"float32",dev); sym["amax"](tv(qn), qsn)
    ksn = ref.absmax_scale(kn)
    q8n = tvm.runtime.empty((B,H,Sn,D),"int8",dev); sym["quant"](tv(qn), qsn, q8n)
    k8n = tvm.runtime.empty((B,HKV,D,Sn),"int8",dev); sym["quant_t"](tv(kn), tv(ksn), k8n)
    assert (q8n.numpy() == ref.quantize(qn, qsn.numpy())).all()
    scn = tvm.runtime.empty((B,H,Sn,Sn),"int32",dev); sym["pil"](q8n, k8n, scn)
    scrn = ref.pilot_scores(q8n.numpy(), ref.quantize(kn, ksn), blk)
    visn = ref.visible(blk, Sn, Sn)[0, 0]
    assert (scn.numpy()[..., visn] == scrn[..., visn]).all()
    kmn = max_keep_count(0.2, Sn, kmin)
    idn = tvm.runtime.empty((B,H,Sn,kmn),"int32",dev); sym["tk"](scn, tv(ratios), idn)
    assert (idn.numpy() == ref.topk_indices(scrn, ratios, blk, kmin, kmn)).all()
    on = tvm.runtime.empty((B,H,Sn,D),"float32",dev); sym["sp"](tv(qn),tv(kn),tv(vn),idn,on)
    np.testing.assert_allclose(on.numpy(), ref.sparse_attention(qn,kn,vn,idn.numpy(),blk), rtol=1e-4, atol=1e-4)
print("symbolic n ok")
