# torch.svd_lowrank's reconstruction error on GPT-2 small's shapes (N(0,1) matrices, as examples/bench_gpu.rs
# uses), truncated to rank r: the mean over the 49 matrices (three drawn per shape) of
# ||W - U_r S_r V_r^T|| / ||W||, and the exact (full SVD) error; same q = r + 10, niter = 2 as
# ../shared/bench/svd_torch.py. Run on the GPU machine: python3 bench/svd_torch_error.py
import json, os, torch
torch.backends.cuda.matmul.allow_tf32 = False
dev = "cuda"
torch.manual_seed(0)
shapes = [((768, 2304), 12), ((768, 768), 12), ((768, 3072), 12), ((3072, 768), 12), ((50257, 768), 1)]
res = {}
for r in (64, 256):
    tot_t = tot_e = 0.0; n = 0
    for (m, k), cnt in shapes:
        for i in range(min(cnt, 3)):
            W = torch.randn(m, k, device=dev)
            U, S, V = torch.svd_lowrank(W, q=r + 10, niter=2)
            A = (U[:, :r] * S[:r]) @ V[:, :r].T
            et = (torch.linalg.norm(W - A) / torch.linalg.norm(W)).item()
            s = torch.linalg.svdvals(W.double())
            ee = torch.sqrt((s[r:] ** 2).sum() / (s ** 2).sum()).item()
            tot_t += et * cnt / min(cnt, 3); tot_e += ee * cnt / min(cnt, 3)
        n += cnt
    res[f"rank{r}"] = {"torch_mean_rel_error": tot_t / n, "exact_mean_rel_error": tot_e / n, "ratio": tot_t / tot_e}
print(json.dumps(res, indent=1))
json.dump(res, open(os.path.join(os.environ.get("OUT", "/tmp"), "torch_err.json"), "w"), indent=1)
