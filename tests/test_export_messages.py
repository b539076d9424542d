"""What export says: where its check images come from, and why an exporter fell back."""
from __future__ import annotations

from pathlib import Path

import pytest

from cityseg_deploy.export.images import for_job
from cityseg_deploy.export.job import ExportJob
from cityseg_deploy.export.graph import exporter_reason
from cityseg_deploy.models.checkpoint import ModelMeta


def _job(**kw) -> ExportJob:
    meta = ModelMeta.for_arch("unet_small", label_set="cityscapes10", input_size=[32, 64])
    return ExportJob(source=Path("m.pt"), meta=meta, source_sha256="", size=(32, 64), **kw)


def test_val_images_borrowed_from_calib_data_say_so(synth_root):
    _, labels, where = for_job(_job(calib_data=synth_root), "val", 2, labels=True)
    assert labels is not None and where == f"2 val images of {synth_root} (the val split of --calib-data)"
    _, _, where = for_job(_job(data=synth_root), "train", 2)
    assert where.endswith("(the train split of --data)")
    # Each root where it belongs: nothing to add.
    _, _, where = for_job(_job(data=synth_root, calib_data=synth_root), "val", 2)
    assert where == f"2 val images of {synth_root}"


def _torch_style_failure() -> Exception:
    """The shape of torch.onnx's dynamo error: boilerplate on top, the real error as __cause__."""
    try:
        try:
            raise RuntimeError("Constraints violated (height)! The values of height must always "
                               "be related to the values of width by height = width // 2.")
        except RuntimeError as inner:
            raise RuntimeError(
                "Failed to export the model with torch.export. \x1b[96mThis is step 1/3\x1b[0m of "
                "exporting the model to ONNX. Next steps:\n- Modify the model code ...") from inner
    except RuntimeError as exc:
        return exc


def test_exporter_reason_names_the_real_error_not_the_boilerplate():
    reason = exporter_reason(_torch_style_failure())
    assert reason.startswith("RuntimeError: Constraints violated (height)!")
    assert "Next steps" not in reason and "\x1b" not in reason


@pytest.mark.parametrize("message", ["x " * 200, "Failed to export. Next steps:", ""])
def test_exporter_reason_is_never_cut_mid_word_nor_empty(message):
    reason = exporter_reason(ValueError(message), limit=60)
    assert len(reason) <= 60 + len("ValueError: ") + 2
    assert "Next steps" not in reason and reason.strip()
    if len(message) > 60:
        assert reason.endswith(" …")
