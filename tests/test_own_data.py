"""The reader's own data: image-shaped tensors and torchvision data sets become a Dataset whose flat storage
restores the images exactly, labels round-trip, and bad input is refused with what to do."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset as TorchDataset

import clutils as cl


def _images(n, shape, seed=0):
    return torch.randint(0, 256, (n, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_uint8_images_of_any_shape_are_scaled_stored_flat_and_restored():
    x, xt = _images(30, (3, 5, 7)), _images(12, (3, 5, 7), seed=1)
    y, yt = torch.arange(30) % 3, torch.arange(12) % 3
    ds = cl.from_tensors(x, y, xt, yt, name="rgb")
    assert ds.image_shape == (3, 5, 7) and ds.input_shape == (3, 5, 7) and ds.n_features == 105
    assert ds.x_train.shape == (30, 105) and ds.x_train.dtype == torch.float32
    torch.testing.assert_close(ds.images("train"), x.float() / 255, rtol=0, atol=0)
    torch.testing.assert_close(ds.images("test") * 255, xt.float(), rtol=0, atol=1e-4)
    assert torch.equal(ds.y_train, y) and torch.equal(ds.y_test, yt) and ds.classes == [0, 1, 2]
    # a pixel's flat index is c*H*W + h*W + w (PyTorch's row-major order, what CNN.features reshapes back)
    assert ds.x_train[4, 2 * 35 + 3 * 7 + 6] == x[4, 2, 3, 6].float() / 255


def test_grey_images_get_one_channel_and_flat_rows_need_their_shape():
    x = torch.rand(20, 6, 6)
    ds = cl.from_tensors(x, torch.arange(20) % 2, x[:4], torch.tensor([0, 1, 1, 0]))
    assert ds.input_shape == (1, 6, 6) and torch.equal(ds.images()[:, 0], x)  # float pixels kept as they are
    with pytest.raises(ValueError, match=r"pass image_shape=\(C, H, W\)"):
        cl.from_tensors(x.flatten(1), torch.arange(20) % 2, x[:4].flatten(1), torch.zeros(4, dtype=torch.long))
    flat = cl.from_tensors(x.flatten(1), np.arange(20) % 2, x[:4].flatten(1), [0, 1, 1, 0], image_shape=(1, 6, 6))
    assert torch.equal(flat.x_train, ds.x_train) and flat.input_shape == (1, 6, 6)


def test_a_cnn_reads_a_user_stream_as_images():
    x = torch.rand(40, 1, 8, 8)
    ds = cl.from_tensors(x, torch.arange(40) % 4, x[:8], torch.arange(8) % 4, name="mine")
    stream = cl.make_stream("split", ds, scenario="task", classes_per_task=2)
    assert len(stream) == 2 and stream.n_features == 64
    torch.manual_seed(0)
    model = cl.CNN(ds.input_shape, (4,), 8, stream.n_outputs, stream.n_heads)
    flat_logits = model(stream[0].x_train, 0)
    assert torch.equal(flat_logits, model(stream[0].x_train.view(-1, *ds.input_shape), 0))


@pytest.mark.parametrize("bad, match", [
    (dict(y_train=torch.arange(20) % 2 + 3), r"0\.\.C-1.*classes \[3, 4\].*torch\.unique"),
    (dict(y_test=torch.tensor([0, 1, 2, 0])), r"test split holds classes \[2\]"),
    (dict(x_train=torch.rand(20, 6, 6, 3)), r"channels-last.*permute\(0, 3, 1, 2\)"),
    (dict(x_test=torch.rand(4, 5, 5)), r"train images are \(1, 6, 6\) but test images \(1, 5, 5\)"),
    (dict(y_train=torch.rand(20)), "integer class labels"),
    (dict(x_train=torch.randint(0, 9, (20, 6, 6))), r"torch\.int64 pixels.*uint8"),
    (dict(y_train=torch.arange(19) % 2), "20 images but y_train 19 labels"),
])
def test_bad_input_is_refused_with_what_to_do(bad, match):
    args = dict(x_train=torch.rand(20, 6, 6), y_train=torch.arange(20) % 2, x_test=torch.rand(4, 6, 6),
                y_test=torch.tensor([0, 1, 1, 0]))
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        cl.from_tensors(**args)


def test_dataset_image_shape_must_hold_the_features():
    with pytest.raises(ValueError, match=r"image_shape \(3, 4\) holds 12 pixels but the images have 16"):
        cl.Dataset("mine", torch.rand(4, 16), torch.zeros(4, dtype=torch.long), torch.rand(2, 16),
                   torch.zeros(2, dtype=torch.long), (3, 4))


class MnistLike(TorchDataset):
    """What torchvision's MNIST holds: ``.data`` (N, H, W) uint8, ``.targets``; items are PIL images."""

    def __init__(self, data, targets, transform=None):
        self.data, self.targets, self.transform = data, targets, transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        from PIL import Image

        img = Image.fromarray(self.data[i].numpy(), mode="L")
        return (img if self.transform is None else self.transform(img)), int(self.targets[i])


class CifarLike(MnistLike):
    """CIFAR-10's layout: ``.data`` a NumPy (N, H, W, 3) uint8 array, ``.targets`` a list."""

    def __getitem__(self, i):
        from PIL import Image

        img = Image.fromarray(self.data[i])
        return (img if self.transform is None else self.transform(img)), self.targets[i]


def test_torchvision_layouts_round_trip_their_pixels_and_labels():
    g = _images(10, (7, 5), seed=2)
    ds = cl.from_torchvision(MnistLike(g, torch.arange(10) % 5), MnistLike(g[:5], torch.arange(5)))
    assert ds.name == "mnistlike" and ds.input_shape == (1, 7, 5)
    torch.testing.assert_close(ds.images()[:, 0] * 255, g.float(), atol=1e-4, rtol=0)
    assert torch.equal(ds.y_train, torch.arange(10) % 5)
    rgb = _images(6, (5, 6, 3), seed=3).numpy()  # (N, H, W, C)
    cif = cl.from_torchvision(CifarLike(rgb, [0, 1, 2, 0, 1, 2]), CifarLike(rgb[:3], [2, 1, 0]))
    assert cif.input_shape == (3, 5, 6)
    torch.testing.assert_close(cif.images() * 255, torch.from_numpy(rgb).permute(0, 3, 1, 2).float(), atol=1e-4, rtol=0)
    assert cif.y_test.tolist() == [2, 1, 0]
    # item by item through the data set's own transform gives the same pixels as the one-piece read
    import torchvision.transforms as T

    slow = cl.from_torchvision(CifarLike(rgb, [0, 1, 2, 0, 1, 2], T.ToTensor()), CifarLike(rgb[:3], [2, 1, 0], T.ToTensor()))
    torch.testing.assert_close(slow.x_train, cif.x_train, atol=1e-6, rtol=0)


def test_torchvision_fakedata_is_read_through_its_items():
    from torchvision.datasets import FakeData

    train = FakeData(size=12, image_size=(3, 6, 4), num_classes=3, random_offset=0)
    test = FakeData(size=4, image_size=(3, 6, 4), num_classes=3, random_offset=100)
    ds = cl.from_torchvision(train, test, name="fake")
    from torchvision.transforms.functional import pil_to_tensor

    img, label = train[5]
    assert ds.input_shape == (3, 6, 4) and int(ds.y_train[5]) == int(label)
    torch.testing.assert_close(ds.images()[5] * 255, pil_to_tensor(img).float(), atol=1e-4, rtol=0)
    assert set(ds.y_test.tolist()) <= set(range(3))


def _appendix_full_profile() -> dict:
    import ast
    import json

    from conftest import BOOK

    nb = json.loads((BOOK / "appendix_own_model.ipynb").read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] != "code" or "FULL = " not in "".join(cell["source"]):
            continue
        for node in ast.parse("".join(cell["source"])).body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "FULL":
                return ast.literal_eval(node.value)
    raise AssertionError("the appendix has no FULL profile")


def _appendix_glue() -> dict:
    import json

    from conftest import BOOK

    nb = json.loads((BOOK / "appendix_own_model.ipynb").read_text())
    return {o["metadata"]["scrapbook"]["name"]: o["data"]["application/papermill.record/text/plain"]
            for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
            if "scrapbook" in o.get("metadata", {})}


def test_the_experiment_file_names_the_appendix_full_profile():
    from clutils.experiments import load_experiment
    from conftest import ROOT

    P = _appendix_full_profile()
    exp = load_experiment(ROOT / "experiments" / "own_model_cnn.toml")
    assert exp.seeds == P["seeds"]
    assert exp.stream == {"kind": "split", "dataset": P["dataset"], "scenario": "domain", "val_fraction": 0.1}
    assert exp.model == {"type": "cnn", "channels": P["channels"], "hidden": P["hidden"]}
    assert exp.train == {"epochs": P["epochs"], "batch_size": P["batch"], "lr": P["lr"], "optimizer": "adam"}
    chosen = float(_appendix_glue()["app_ewc_lam"].strip("'"))  # the strength the appendix chose, printed to 6 digits
    lam = dict(exp.configs)["EWC"][0]["lam"]
    assert abs(lam - chosen) <= 1e-5 * chosen
    assert dict(exp.configs) == {"fine-tuning": [], "EWC": [{"type": "ewc", "lam": lam,
                                                             "n_samples": P["importance_samples"]}],
                                 f"replay {P['memory']}": [{"type": "replay", "memory": P["memory"]}]}
    assert len(exp.runs) == 3 * len(P["seeds"])


def test_an_experiment_file_builds_a_cnn_on_the_data_sets_images(tmp_path):
    from clutils.experiments import ExperimentError, load_experiment, specs

    text = ('seeds = [0]\n[stream]\nkind = "split"\ndataset = "digits"\n[model]\ntype = "cnn"\nchannels = [4]\n'
            'hidden = 8\n[[config]]\nlabel = "r"\nstrategy = [{ type = "replay", memory = 20 }]\n')
    (tmp_path / "e.toml").write_text(text)
    spec = specs(load_experiment(tmp_path / "e.toml"), tmp_path)[0]
    model = spec.make_model()
    assert isinstance(model, cl.CNN) and model.input_shape == (1, 8, 8) and model.channels == (4,)
    assert model.hidden == (8,) and model.n_heads == 5 and isinstance(spec.strategy, cl.Replay)
    assert spec.strategy.memory == 20
    (tmp_path / "bad.toml").write_text(text.replace("channels = [4]\n", "").replace("20", "5"))
    with pytest.raises(ExperimentError, match=r"model.channels.*missing.*channels = \[8, 16\]"):
        load_experiment(tmp_path / "bad.toml")
    (tmp_path / "deep.toml").write_text(text.replace("[4]", "[4, 4, 4, 4]"))
    with pytest.raises(ExperimentError, match="shrink a 8x8 image to nothing"):
        load_experiment(tmp_path / "deep.toml")
    (tmp_path / "type.toml").write_text(text.replace('"cnn"', '"rnn"'))
    with pytest.raises(ExperimentError, match=r"model.type.*\"mlp\".*\"cnn\""):
        load_experiment(tmp_path / "type.toml")


@pytest.mark.book
def test_the_appendix_runs_quick_on_the_digits_and_glues_what_its_committed_run_glues(tmp_path):
    """CI's run of the appendix: the quick profile (8x8 digits as (1, 8, 8) tensors) trains its nine CNN runs and
    glues the names the committed full run glues, with accuracies that are percentages above chance."""
    import nbformat
    import papermill as pm
    from conftest import BOOK

    path = BOOK / "appendix_own_model.ipynb"
    out = tmp_path / path.name
    pm.execute_notebook(str(path), str(out), parameters={"PROFILE": "quick"}, cwd=str(BOOK), kernel_name="python3",
                        progress_bar=False)

    def glued(nb):
        return {o["metadata"]["scrapbook"]["name"]: o["data"] for c in nb.cells if c.cell_type == "code"
                for o in c.get("outputs", []) if "scrapbook" in o.get("metadata", {})}

    ran, committed = glued(nbformat.read(out, as_version=4)), glued(nbformat.read(path, as_version=4))
    assert set(ran) == set(committed) and "app_replay_vs_naive" in ran
    for key in ("app_naive_acc", "app_ewc_acc", "app_replay_acc"):
        assert 50 < float(ran[key]["application/papermill.record/text/plain"]) <= 100  # two outputs per task: chance is 50 %
    assert int(ran["app_n_params"]["application/papermill.record/text/plain"]) == 4274  # CNN((1, 8, 8), (8,), 32, 2): 80 + 4128 + 66
