"""The caption under each kind of report plot; scale-dependent words are filled in from a RunScale."""

from __future__ import annotations

from avakit.report.scale import AVA_RUN, RunScale

CAPTIONS: dict[str, str] = {
    "training_curves": "Per epoch: training and validation loss (left), validation SRCC/PLCC with the "
    "best epoch starred (middle), learning rate of each optimizer param group at the end of the "
    "epoch (right). A widening gap between train and val loss means overfitting.",
    "learning_rates": "Learning rate of each param group at every recorded optimizer step (warmup, "
    "cosine decay or plateau drops show up here).",
    "gradient_norms": "L2 norm of the gradients per model part at every recorded step, log scale. "
    "Flat near-zero lines mean a frozen or dead part; spikes or steady growth mean instability.",
    "scatter": "One dot per image. Dots on the dashed identity line are perfect; a cloud flatter than "
    "the line means the model compresses scores toward the mean (common on AVA).",
    "residuals": "Predicted minus real mean score. Centred on zero = unbiased; the width is the "
    "typical error.",
    "calibration": "Images grouped by real score (bins of width {unit}): mean prediction per bin with its "
    "spread. Points above the identity over-rate that score range, points below under-rate it.",
    "error_by_score": "Mean absolute error per real-score bin, with the number of images per bin. "
    "Extreme (rare) scores are usually predicted worst.",
    "confusion": "The literature's binary task: an image is '{word}' when its {noun} is {rule}. "
    "Diagonal cells are correct; percentages are of all images.",
    "score_distributions": "Histograms of real and predicted mean scores. A narrower predicted "
    "histogram means the model avoids extreme scores.",
    "srcc_by_epoch": "SRCC/PLCC recomputed from each saved predictions/val_epoch_NNN.parquet "
    "(one point per file: the model of that epoch, no TTA); the star marks the best epoch, whose "
    "model is best_model.pt.",
    "group_mae": "Mean absolute error per group (largest groups first) against the MAE of all "
    "images (dashed). An image with two tags counts in both; small groups are noisy.",
    "vote_histograms": "Images picked evenly along the real-score range: the real share of votes per "
    "rating (blue) next to the predicted distribution (orange).",
}


def caption(key: str, rs: RunScale = AVA_RUN) -> str:
    """The caption of plot kind `key`, its scale-dependent words filled in from `rs`."""
    text = CAPTIONS.get(key, "")
    if "{" not in text:
        return text
    words = {"unit": f"{rs.unit:.3g}", "noun": rs.noun}
    if rs.threshold is not None:
        words |= {"word": rs.cut()["word"], "rule": rs.cut()["rule"]}
    return text.format(**words)
