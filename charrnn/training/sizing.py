"""Training that sizes itself: the model, its regularisation and its length, from the corpus and budget.

A pure function of what is known before the first step (`SizingInputs`: the corpus's training
tokens, the budget, this machine's measured speed, the options the user set) to the settings the
user left open (`SizingChoice`), with the reason in words. No clock, no torch: the speed is
measured by `speed_probe` and passed in, so tests give any speed they like.

The rule, and the measurements it comes from (docs/experiments/2026-12-04-self-sizing.md; the raw
results are benchmarks/results/sizing.jsonl, `python benchmarks/sizing_study.py table`):

1. The budget is turned into steps of each shape of `SHAPES`: seconds x the measured steps a
   second of the reference shape (2 x 384) / the shape's step cost relative to it (measured with
   it for the smallest shape, `PROBED_SHAPE`; the ladder's for the others).
2. Size: the largest shape that still makes `MIN_STEPS` steps and has at most
   `MAX_PARAMETERS_PER_TOKEN` weights per training token. A shape larger than the reference needs
   `MIN_STEPS_TO_GROW` steps (`MIN_STEPS_TO_GROW_BY_SHAPE` for 2 x 512) where the reference
   would memorise the text (its exposure, as in 3, would call for dropout), and
   `MIN_STEPS_TO_GROW_ON_FRESH_TEXT` where it would not; the
   reference itself needs `MIN_REFERENCE_STEPS_WITHIN_ONE_PASS` where it would not read the text
   once. With text to spare, more steps of a smaller model beat fewer of a bigger one. Fewer
   steps than that left the bigger models behind the smaller ones; more weights than that
   overfitted a small corpus before dropout could help.
3. Dropout from how hard the chosen model can memorise the text (`dropout_for_exposure`): the
   passes it will make times its weights per training token. None while that is small, more as
   it grows; less per layer for a deeper model, which drops at more places (`dropout_for_depth`).
4. A stop after `MAX_PASSES` passes where the budget would read the text more often: the best
   model comes early and the rest of the budget would only memorise, so the run is planned to end
   there (`max_steps`), with its learning rate annealed over those steps, and gives the time back.
5. A higher learning rate for 2 x 384 and the larger shapes where the run reads the text several
   times (`HIGHER_RATE_SHAPES`, `HIGHER_RATE_FROM_PASSES`): there they learnt more at it, while on text
   read less than once a higher rate learnt less.

Options the user set are kept, and the rest are chosen around them: a given width keeps the
depth chosen for it, a given dropout or learning rate is never changed. Under a step budget
(`--max-steps`) the shape stays the default one (the user fixed the work, not the time) and only
the regularisation and the rate are chosen; so it is when the machine's speed is unknown.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# (layers, hidden size, step cost relative to 2 x 384), smallest first. The costs are medians of
# `python benchmarks/sizing_study.py costs` (bf16, batch 8) on Intel Xeon Sapphire Rapids: one
# thread, two sessions (2 x 512: 2.08 and 1.90; 3 x 512: 3.34 and 3.06), and two threads, as a
# run uses them (2 x 512: 1.79; 3 x 512: 3.26). The choice only needs them to about 10%; 2 x 512
# takes the latest one-thread figure, which the study's 15-minute runs were made with. 2 x 256's
# moves more (0.51 on two threads, 0.64 with 3,137 characters): a run takes it from the speed
# probe (`PROBED_SHAPE`), and this figure stands only where there is no probe.
SHAPES: tuple[tuple[int, int, float], ...] = (
    (2, 256, 0.40),
    (2, 384, 1.0),
    (2, 512, 1.9),
    (3, 512, 3.2),
    (3, 768, 8.8),
)
REFERENCE_SHAPE = (2, 384)
# The shape whose cost the speed probe measures beside the reference's, at the run's own threads
# and vocabulary (`SizingInputs.measured_costs`): the ladder's one-thread, 65-character figure
# is furthest off for it (0.40, against 0.51 on two threads and 0.64 with 3,137 characters).
PROBED_SHAPE = (2, 256)
# A shape needs this many steps to be chosen over the smaller ones. On tinyshakespeare 2 x 256 for
# 4,015 steps (what two threads make in 2 minutes) beat 2 x 384 for 2,044 by 0.009, and 2 x 384
# for 2,555 (2.5 minutes, at --lr 0.01 as item 5 gives it there) beat 2 x 256 for 5,020 by 0.008
# (docs/experiments/2026-12-05-sizing-eighth-round.md). At 2 minutes 2 x 256 also beat 2,044
# steps of 2 x 384 on 10 MB of code by 0.073 (3,605; 0.135 for 5,110), and lost on 1 MB of code
# by 0.025 and of translations by 0.011 (5,110 each; docs/experiments/2026-12-05-sizing-sixth-
# round.md); at 5 minutes 2 x 256 for 13,100 steps was 0.044 behind 2 x 384 on tinyshakespeare.
# It was 4,000, where the default 5-minute run plans 4,000-4,700 steps: within the probe's spread
# of it (12 readings on an idle machine: 14.9-17.6 steps a second, where 14.8 chose 2 x 256).
MIN_STEPS = 2_500
# ... and the reference shape needs this many where it would not read the text once: with text to
# spare, steps count most. On 10 MB of code 2 x 256 (for the steps two threads make) beat 2 x 384
# by 0.073 at 2 minutes and 0.024 at 5, and lost by 0.030 at 15 (15,330 steps of 2 x 384):
# log-linearly between 5 and 15 minutes the two meet at 8.2 minutes, 8,400 steps of 2 x 384. On
# 10 MB of six languages 2 x 256 beat it by 0.034 at 2 minutes and 0.015 at 5
# (docs/experiments/2026-12-05-sizing-sixth-round.md).
MIN_REFERENCE_STEPS_WITHIN_ONE_PASS = 8_000
# A shape larger than the reference needs this many where the reference would memorise the text.
# On tinyshakespeare 2 x 512 for 8,064 steps (1.3771) beat 2 x 384 for 15,330 (1.3861, which
# needed dropout 0.25), and 3 x 512 for 9,581 (1.3718) beat both, but 3 x 512 for 5,007 steps kept
# 1.4090, worse than 5 minutes of the default: a bigger model cut short is behind a smaller one
# (docs/experiments/2026-12-05-sizing-third-round.md).
MIN_STEPS_TO_GROW = 7_000
# ... but 2 x 512 needs fewer: for 6,498 steps (dropout 0.19, --lr 0.01) it kept 1.3668, ahead of
# 2 x 384 for the 12,346 the same time buys (dropout 0.2, 1.3714) and level with its own 8,068
# (1.3686, 1.3665). At 7,000 the default 15-minute run, which plans 6,650-7,900 steps of 2 x 512
# at the probe's readings on an idle machine, chose 2 x 384 for 9 readings in 20
# (docs/experiments/2026-12-05-sizing-eighth-round.md). 3 x 512 keeps 7,000: for 5,007 steps it
# was far behind (1.4090).
MIN_STEPS_TO_GROW_BY_SHAPE = {(2, 512): 6_000}
# ... and this many where it would not. On 100 MB of code (a sixth of a pass in 15 minutes) 2 x 384
# for 15,330 steps beat 2 x 512 for 8,068 (docs/experiments/2026-12-05-sizing-across-corpora.md).
# Where a bigger model overtakes it on such text is not measured yet: this is twice the steps at
# which 2 x 512 lost (30 minutes for 2 x 512 on the study's machine, about 50 for 3 x 512).
MIN_STEPS_TO_GROW_ON_FRESH_TEXT = 16_000
# At most this many weights per training token (a 200 KB corpus: 2 x 256; 1 MB: up to 3 x 512).
MAX_PARAMETERS_PER_TOKEN = 6.0
# Time that is not training steps: evaluations (at most a tenth, schedule.MAX_EVAL_SHARE) and
# checkpoints. The steps a budget buys are counted on the rest.
STEP_SHARE_OF_BUDGET = 0.9
# No dropout up to this exposure (passes x weights per token): 2 x 384 reading tinyshakespeare 5
# times (about 10) learnt less with dropout 0.1 than without.
NO_DROPOUT_UP_TO_EXPOSURE = 12.0
# A time budget that would read the text more often than this stops after this many passes, its
# learning rate annealed over them: on a 200 KB corpus, 5 minutes (73 passes) kept a worse best
# model than 2 minutes (29 passes), since the best came early while the rate was still high.
MAX_PASSES = 16.0
# The peak learning rate of these shapes where the user sets none and the run reads the text at
# least `HIGHER_RATE_FROM_PASSES` times. There a higher rate learnt more: 2 x 512 for 8,068 steps of
# tinyshakespeare (15 minutes, 8.2 passes, dropout 0.22) kept 1.3875 at --lr 0.0035, 1.3771 at
# 0.005 (TrainConfig's), 1.3716 at 0.007 and 1.3686 at 0.01, and with a second seed 1.3785 at
# 0.005 and 1.3665 at 0.01; 3 x 512 for 9,581 steps (30 minutes, 9.8 passes) 1.3718 at 0.005 and
# 1.3591 at 0.01. 2 x 384 for 5 minutes (5,110 steps, about 5 passes of a million characters):
# tinyshakespeare 1.3801 against 1.3904 (medians of two seeds), 1 MB of code 1.2610 against
# 1.2983, 1 MB of translations 1.3503 against 1.3837. On text read less than once it learnt less:
# 2 x 256 on 10 MB of code for 5 minutes (0.9 of a pass) kept 1.3484 at 0.01 against 1.3353
# (docs/experiments/2026-12-05-sizing-seventh-round.md). 2 x 256 gained on tinyshakespeare too
# (4.1 passes: 1.4096 against 1.4173), but its points on the small corpora, where it reads the
# text 16 times with heavy dropout, were measured only at 0.005, so it keeps that until they are
# run again; 3 x 768's rate is not measured.
HIGHER_LEARNING_RATE = 0.01
HIGHER_RATE_SHAPES: tuple[tuple[int, int], ...] = ((2, 384), (2, 512), (3, 512))
# The gains above were at 4 to 10 passes; at 2.6 (2 x 384 for 2,555 steps of tinyshakespeare) 0.01
# kept 1.4047 against 1.4122 at 0.005 (docs/experiments/2026-12-05-sizing-eighth-round.md).
HIGHER_RATE_FROM_PASSES = 2.5
# The options this rule may choose, by the name of the config field (and the CLI option).
SIZED_OPTIONS = ("num_layers", "hidden_size", "dropout", "lr", "max_steps")


def dropout_for_exposure(passes: float, weights_per_token: float) -> float:
    """Dropout for a model with `weights_per_token` weights per training token that reads the text
    `passes` times: how much it can memorise grows with both.

    None up to an exposure (their product) of 12, then 0.1 rising by 0.1 each time it doubles:
    0.2 at 24, 0.3 at 48, at most 0.5. Tinyshakespeare for 5 minutes at 2 x 384 (about 10): none;
    15 minutes at 2 x 512 (about 25): 0.2; 200 KB at 2 x 256 for 16 passes (about 78): 0.37.
    """
    exposure = passes * weights_per_token
    if exposure <= NO_DROPOUT_UP_TO_EXPOSURE:
        return 0.0
    return round(min(0.5, 0.1 + 0.1 * math.log2(exposure / NO_DROPOUT_UP_TO_EXPOSURE)), 2)


def dropout_for_depth(dropout: float, num_layers: int) -> float:
    """The dropout of a `num_layers` model that drops as much of the signal, end to end, as
    `dropout` does in a 2-layer one (what `dropout_for_exposure` was measured on).

    --dropout applies at each of num_layers places (between the layers, and before the output
    layer), so a deeper model with the same value drops more: 1 - (1 - p)^(2 / num_layers). On
    tinyshakespeare, 3 x 512 for 9,581 steps kept 1.3718 at 0.2 against 1.3767 at the 0.31 the
    2-layer exposure rule gave it (docs/experiments/2026-12-05-regularisation.md); this gives 0.22.
    """
    if dropout <= 0.0:
        return 0.0
    return round(1.0 - (1.0 - dropout) ** (2.0 / num_layers), 2)


def parameters_of(
    num_layers: int, hidden_size: int, vocab_size: int, embedding_size: int, cell_gates: int
) -> int:
    """Weights of a charrnn model of this shape (embedding, recurrent layers with biases, output layer)."""
    recurrent = sum(
        cell_gates * hidden_size * ((embedding_size if layer == 0 else hidden_size) + hidden_size + 2)
        for layer in range(num_layers)
    )
    return vocab_size * embedding_size + recurrent + hidden_size * vocab_size + vocab_size


@dataclass(frozen=True)
class SizingInputs:
    """What is known before the first step."""

    train_tokens: int  # tokens in the training part of the corpus
    chars_per_token: float  # 1 for char and byte-level text; more for subword tokenisers
    vocab_size: int
    budget_seconds: float | None  # the time budget (--max-time, or the default), if any
    max_steps: int | None  # the step budget (--max-steps), if any
    # Steps a second of the reference shape at this batch, window, device, precision and threads
    # (speed_probe); None when not measured (a step budget needs none).
    reference_steps_per_second: float | None
    batch_size: int  # streams per step, over every process
    seq_len: int
    model_options: dict[str, Any] = field(default_factory=dict)  # every ModelConfig field
    given: frozenset[str] = frozenset()  # the option names the user set
    given_max_time: float | None = None  # --max-time as given (None: the default budget applies)
    # Step costs relative to the reference measured here with it (speed_probe), which replace the
    # ladder's: (layers, hidden) -> cost.
    measured_costs: dict[tuple[int, int], float] = field(default_factory=dict)


@dataclass(frozen=True)
class SizingChoice:
    """The settings chosen (only those the user left open), and why."""

    chosen: dict[str, Any]  # config field -> value, for the fields this rule set
    steps: int  # the steps the budget buys at the chosen shape (estimated under a time budget)
    passes: float  # passes over the training text those steps make
    reason: str  # one sentence a user understands

    def record(self) -> dict[str, Any]:
        """Plain values for the run's metadata (`info`, `runs`)."""
        return {
            "chosen": dict(self.chosen),
            "steps": self.steps,
            "passes": round(self.passes, 2),
            "reason": self.reason,
        }


def choose_size(inputs: SizingInputs) -> SizingChoice:
    """The settings the user left open, chosen from the corpus size, the budget and the speed."""
    options, given = inputs.model_options, inputs.given
    tokens_per_step = inputs.batch_size * inputs.seq_len
    train_tokens = max(1, inputs.train_tokens)
    cell_gates = {"lstm": 4, "gru": 3}.get(options.get("model", "lstm"), 1)
    shape_open = not {"num_layers", "hidden_size"} <= given
    timed = inputs.max_steps is None and inputs.reference_steps_per_second is not None

    def steps_of(layers: int, hidden: int) -> int:
        if inputs.max_steps is not None:
            return inputs.max_steps
        assert inputs.budget_seconds is not None and inputs.reference_steps_per_second is not None
        reference_steps = inputs.budget_seconds * STEP_SHARE_OF_BUDGET * inputs.reference_steps_per_second
        return max(1, int(reference_steps / _relative_cost(layers, hidden, inputs.measured_costs)))

    def weights_of(layers: int, hidden: int) -> int:
        embedding = int(options.get("embedding_size", 64))
        return parameters_of(layers, hidden, inputs.vocab_size, embedding, cell_gates)

    layers = int(options.get("num_layers", REFERENCE_SHAPE[0]))
    hidden = int(options.get("hidden_size", REFERENCE_SHAPE[1]))
    chosen: dict[str, Any] = {}
    why_shape = ""
    if shape_open and timed:
        # Would the reference, for the whole budget (up to MAX_PASSES), read the text often enough
        # to call for dropout? Would it not read it once?
        reference_passes = steps_of(*REFERENCE_SHAPE) * tokens_per_step / train_tokens
        reference_weights_per_token = weights_of(*REFERENCE_SHAPE) / train_tokens
        reference_memorises = (
            dropout_for_exposure(min(MAX_PASSES, reference_passes), reference_weights_per_token) > 0
        )
        within_one_pass = reference_passes < 1
        candidates = [
            (shape_layers, shape_hidden)
            for shape_layers, shape_hidden, _ in SHAPES
            if ("num_layers" not in given or shape_layers == layers)
            and ("hidden_size" not in given or shape_hidden == hidden)
        ] or [(layers, hidden)]
        fitting = [
            shape
            for shape in candidates
            if steps_of(*shape) >= _min_steps(*shape, reference_memorises, within_one_pass)
            and weights_of(*shape) <= MAX_PARAMETERS_PER_TOKEN * train_tokens
        ]
        # Nothing fits (a very short budget, or a tiny corpus): the smallest shape learns fastest.
        layers, hidden = fitting[-1] if fitting else candidates[0]
        if "num_layers" not in given:
            chosen["num_layers"] = layers
        if "hidden_size" not in given:
            chosen["hidden_size"] = hidden
        why_shape = _why_shape(
            fitting,
            candidates,
            (layers, hidden),
            steps_of,
            weights_of,
            train_tokens,
            lambda layers, hidden: _min_steps(layers, hidden, reference_memorises, within_one_pass),
        )

    steps = steps_of(layers, hidden) if (timed or inputs.max_steps is not None) else 0
    # Only under a time budget: stopping early there gives the user their time back, while a step
    # budget is the work the user asked for.
    budget_passes = steps * tokens_per_step / train_tokens
    enough = math.ceil(MAX_PASSES * train_tokens / tokens_per_step)
    if timed and steps > enough:
        steps = chosen["max_steps"] = enough
        if inputs.given_max_time is None:
            chosen["max_time"] = inputs.budget_seconds  # the default budget stays the time limit
    passes = steps * tokens_per_step / train_tokens
    if "dropout" not in given and (timed or inputs.max_steps is not None):
        exposure_dropout = dropout_for_exposure(passes, weights_of(layers, hidden) / train_tokens)
        chosen["dropout"] = dropout_for_depth(exposure_dropout, layers)
    if "lr" not in given and (layers, hidden) in HIGHER_RATE_SHAPES and passes >= HIGHER_RATE_FROM_PASSES:
        chosen["lr"] = HIGHER_LEARNING_RATE

    return SizingChoice(
        chosen=chosen,
        steps=steps,
        passes=passes,
        reason=_reason(inputs, chosen, steps, budget_passes, layers, hidden, why_shape, timed),
    )


def _min_steps(layers: int, hidden: int, reference_memorises: bool, within_one_pass: bool) -> int:
    """The steps a shape must make to be chosen over the smaller ones."""
    if (layers, hidden) == REFERENCE_SHAPE and within_one_pass:
        return MIN_REFERENCE_STEPS_WITHIN_ONE_PASS
    if _relative_cost(layers, hidden) <= 1.0:
        return MIN_STEPS
    if not reference_memorises:
        return MIN_STEPS_TO_GROW_ON_FRESH_TEXT
    return MIN_STEPS_TO_GROW_BY_SHAPE.get((layers, hidden), MIN_STEPS_TO_GROW)


def ladder_cost(layers: int, hidden: int) -> float | None:
    """The measured step cost of a shape of `SHAPES` relative to the reference, None off the ladder."""
    for shape_layers, shape_hidden, cost in SHAPES:
        if (shape_layers, shape_hidden) == (layers, hidden):
            return cost
    return None


def _relative_cost(
    layers: int, hidden: int, measured_costs: dict[tuple[int, int], float] | None = None
) -> float:
    """A shape's step cost relative to the reference: measured here if the probe timed it, else
    the ladder's, else by weights."""
    if measured_costs and (layers, hidden) in measured_costs:
        return measured_costs[(layers, hidden)]
    cost = ladder_cost(layers, hidden)
    if cost is not None:
        return cost
    # A shape the user chose off the ladder: a step's work grows with the recurrent weights.
    reference = REFERENCE_SHAPE[0] * REFERENCE_SHAPE[1] ** 2
    return max(0.05, layers * hidden**2 / reference)


def _why_shape(
    fitting: list[tuple[int, int]],
    candidates: list[tuple[int, int]],
    picked: tuple[int, int],
    steps_of: Callable[[int, int], int],
    weights_of: Callable[[int, int], int],
    train_tokens: int,
    min_steps: Callable[[int, int], int],
) -> str:
    """Why the picked shape, in a few words: what stopped the next larger one."""
    larger = [
        shape
        for shape in candidates
        if shape not in fitting and candidates.index(shape) > candidates.index(picked)
    ]
    if not fitting:
        return "the budget is too short for a larger model"
    if not larger:
        return ""
    nxt = larger[0]
    if weights_of(*nxt) > MAX_PARAMETERS_PER_TOKEN * train_tokens:
        return f"{_shape_text(nxt)} would have too many weights for this much text"
    text = f"{_shape_text(nxt)} would make only {steps_of(*nxt):,} steps"
    needed = min_steps(*nxt)
    on_text_read_over_and_over = _min_steps(*nxt, reference_memorises=True, within_one_pass=False)
    if steps_of(*nxt) >= on_text_read_over_and_over:
        # Steps that would be enough on a smaller text: say why they are not here.
        text += f", and with this much text to read it needs {needed:,}"
    return text


def _shape_text(shape: tuple[int, int]) -> str:
    return f"{shape[0]} x {shape[1]}"


def _amount(tokens: float, unit: str) -> str:
    """1,115,394 -> '1.1 M characters'."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if tokens >= scale:
            return f"{tokens / scale:.1f} {suffix} {unit}"
    return f"{int(tokens)} {unit}"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g} hours" if seconds != 3600 else "1 hour"
    if seconds >= 60:
        minutes = seconds / 60
        text = f"{minutes:.0f}" if minutes >= 2 else f"{minutes:.1f}".removesuffix(".0")
        return "1 minute" if text == "1" else f"{text} minutes"
    return f"{seconds:.0f} seconds"


def _reason(
    inputs: SizingInputs,
    chosen: dict[str, Any],
    steps: int,
    budget_passes: float,
    layers: int,
    hidden: int,
    why_shape: str,
    timed: bool,
) -> str:
    """'1.1 M characters, 15 minutes: about 12 passes over the text, so 3 x 512 with dropout 0.25'.

    `budget_passes`: the passes the whole budget would make (a run that stops sooner says so).
    """
    unit = "characters" if inputs.chars_per_token == 1.0 else "tokens"
    corpus = _amount(inputs.train_tokens, unit)
    if inputs.max_steps is not None:
        budget = f"{inputs.max_steps:,} steps"
    elif inputs.budget_seconds is not None:
        budget = _duration(inputs.budget_seconds)
    else:
        budget = "no budget"
    if not (timed or inputs.max_steps is not None):
        return f"{corpus}, {budget}: the speed of this machine is unknown, so the default size"
    model = _model_text(chosen, layers, hidden, inputs.model_options)
    estimate = "about " if timed and budget_passes >= 0.1 else ""
    passes_text = f"{estimate}{_passes_text(budget_passes)} over the text"
    if "max_steps" in chosen:
        # The budget would read the text more often than helps: say so, and when it will stop.
        text = (
            f"{corpus}, {budget}: time for {passes_text}, but after {MAX_PASSES:g} a model only "
            f"memorises, so {model}, stopping after {steps:,} steps"
        )
    else:
        text = f"{corpus}, {budget}: {passes_text}, so {model}"
    if why_shape:
        text += f" ({why_shape})"
    return text


def _passes_text(passes: float) -> str:
    if passes < 0.1:
        return "under a tenth of a pass"
    if passes < 1:
        return f"{passes:.1f} of a pass"
    if passes < 10:
        return f"{passes:.1f} passes"
    return f"{passes:.0f} passes"


def _model_text(chosen: dict[str, Any], layers: int, hidden: int, model_options: dict[str, Any]) -> str:
    """'3 x 512 with dropout 0.25' (what the run will use, chosen or given)."""
    dropout = chosen.get("dropout", model_options.get("dropout", 0.0))
    text = f"{layers} x {hidden}" + (f" with dropout {dropout:g}" if dropout else " without dropout")
    if "lr" in chosen:
        text += f" at a learning rate of {chosen['lr']:g}"
    return text
