"""NAS-RL's controller (Zoph & Le, ICLR 2017, §3.1 and §4.1): an LSTM that emits an
architecture one token at a time, each token drawn from a softmax over that decision's options,
the **sampled** token's embedding fed back as the next input.

Over a space's decision list it is autoregressive in an order where every choice that encloses
other decisions (a skippable layer's skip-or-not, a block's op) comes before them, so the
controller knows whether a decision matters when it reaches it. A decision that does not
matter (inside a skipped layer or an unchosen option) is still given an index (its argmax
under the current state, so it is deterministic and carries no information) but it is neither
counted in log-probabilities and entropies nor fed back as a choice: the next input is the
decision's "inactive" embedding, one extra row of its table.

Every decision has its own embedding table (indices never overlap across decisions) and its
own softmax head. Weights start U(−init_range, init_range) (paper: 0.08). ENAS's optional
logit shaping applies in ENAS's order: logits / temperature, then tanh_constant · tanh(·).

Log-probabilities for the update are recomputed by teacher forcing with the indices the step
actually used (after any warmup replacement), so the gradient is exact autograd; `sample` runs
without gradients.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from nascli.search.policy import Controller, ControllerSettings, ancestors
from nascli.space.schema import INPUT
from nascli.space.spaces import SearchSpace


def parents_first(space: SearchSpace) -> list[int]:
    """The decision positions in index order, except that every enclosing choice comes before
    the decisions it encloses."""
    chains = ancestors(space)
    order: list[int] = []
    seen: set[int] = set()

    def emit(position: int) -> None:
        if position in seen:
            return
        for parent, _ in sorted(chains[position]):
            emit(parent)
        seen.add(position)
        order.append(position)

    for position in range(space.num_decisions):
        emit(position)
    return order


class LSTMController(Controller):
    """NAS-RL's LSTM controller over the decisions of `space`, trained with torch's Adam."""

    def __init__(
        self,
        space: SearchSpace,
        settings: ControllerSettings,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ):
        super().__init__(space, device)
        self.settings = settings
        self.device = torch.device(device)
        self.order = torch.tensor(parents_first(space), device=self.device)
        sizes = self.sizes[self.order]  # options of the t-th decision in controller order
        width = int(sizes.max())
        # One embedding table per decision: options 0..C-1, then its "inactive" row.
        offsets = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long), sizes + 1]), 0)
        self.offsets = offsets[:-1].to(self.device)
        self.inactive_row = (self.offsets + sizes).to(self.device)
        self.valid = torch.arange(width, device=self.device)[None, :] < sizes[:, None]
        self._init = torch.Generator().manual_seed(seed)  # every weight's draw, in order
        hidden, uniform = settings.hidden, self._uniform
        self.lstm = nn.LSTM(hidden, hidden, settings.layers, batch_first=True).to(self.device)
        with torch.no_grad():
            for parameter in self.lstm.parameters():
                parameter.copy_(uniform(*parameter.shape))
        self.start = uniform(hidden)
        self.embedding = uniform(int(offsets[-1]), hidden)
        self.head_weight = uniform(len(sizes), width, hidden)
        self.head_bias = uniform(len(sizes), width)
        self.params = [*self.lstm.parameters(), self.start, self.embedding]
        self.params += [self.head_weight, self.head_bias]
        self.optimizer = torch.optim.Adam(
            self.params,
            lr=settings.lr,
            betas=(settings.adam_beta1, settings.adam_beta2),
            eps=settings.adam_epsilon,
        )

    def _uniform(self, *shape: int) -> nn.Parameter:
        """A new weight drawn U(−init_range, init_range) from the controller's generator."""
        r = self.settings.init_range
        values = (torch.rand(*shape, generator=self._init, dtype=torch.float32) * 2 - 1) * r
        return nn.Parameter(values.to(self.device))

    # ---------------------------------------------------------------- the distribution
    def _logits(self, t: int | slice, output: torch.Tensor) -> torch.Tensor:
        """Shaped logits of decision(s) t (controller order) from the LSTM's output."""
        if isinstance(t, int):
            logits = output @ self.head_weight[t].T + self.head_bias[t]
        else:
            logits = torch.einsum("btn,tcn->btc", output, self.head_weight[t]) + self.head_bias[t]
        return self._shape(logits, self.valid[t])

    def _shape(self, logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """ENAS's optional shaping, then the options a decision does not have masked out."""
        s = self.settings
        if s.temperature is not None:
            logits = logits / s.temperature
        if s.tanh_constant is not None:
            logits = s.tanh_constant * torch.tanh(logits)
        return logits.masked_fill(~valid, float("-inf"))

    @torch.no_grad()
    def _decode(
        self,
        num: int,
        generator: torch.Generator | None,
        temperature: float | None,
        greedy: bool,
    ) -> torch.Tensor:
        indices = torch.zeros(num, self.space.num_decisions, dtype=torch.long, device=self.device)
        x = self.start.expand(num, 1, -1)
        state = None
        for t in range(len(self.order)):
            output, state = self.lstm(x, state)
            logits = self._logits(t, output[:, 0]).float()
            if greedy:
                token = logits.argmax(dim=1)
            else:
                logp = logits.log_softmax(dim=1)
                probs = (logp / temperature if temperature else logp).softmax(dim=1)
                token = torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0]
                token = token.to(self.device)
            # Decision t's enclosing choices all come earlier, so they are already set here.
            active = self.active(indices)[:, self.order[t]]
            token = torch.where(active, token, logits.argmax(dim=1))
            indices[:, self.order[t]] = token
            row = torch.where(active, self.offsets[t] + token, self.inactive_row[t])
            x = self.embedding[row].unsqueeze(1)
        return indices

    def sample(
        self, num: int, generator: torch.Generator | None = None, temperature: float | None = None
    ) -> torch.Tensor:
        return self._decode(num, generator, temperature, greedy=False)

    def argmax(self) -> torch.Tensor:
        """Greedy decoding: the likeliest token at every step, fed back."""
        return self._decode(1, None, None, greedy=True)[0]

    def _teacher_forced(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, D, C) log-probabilities of every step's options, in controller order, with the
        architecture's own tokens fed back."""
        indices = indices.to(self.device)
        tokens = indices[:, self.order]  # (B, D) controller order
        active = self.active(indices)[:, self.order]
        rows = torch.where(active, self.offsets + tokens, self.inactive_row)
        inputs = torch.cat(
            [self.start.expand(len(indices), 1, -1), self.embedding[rows[:, :-1]]], dim=1
        )
        output, _ = self.lstm(inputs)
        return self._logits(slice(None), output).log_softmax(dim=2)

    def _chosen_and_entropy(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) log-probability of each chosen token and entropy of each step, in controller
        order."""
        logp = self._teacher_forced(indices)
        tokens = indices.to(self.device)[:, self.order]
        chosen = logp.gather(2, tokens.unsqueeze(2))[:, :, 0]
        entropy = -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(dim=2)
        return chosen, entropy

    @torch.no_grad()
    def conditionals(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, D, C) each decision's option probabilities given the architecture's tokens
        before it in controller order (index order along D)."""
        probs = self._teacher_forced(indices).exp()
        out = torch.empty_like(probs)
        out[:, self.order] = probs
        return out

    def _counted(self, indices: torch.Tensor, counted: torch.Tensor | None) -> torch.Tensor:
        mask = self.active(indices) if counted is None else counted
        return mask.to(self.device)[:, self.order]

    def log_prob(self, indices: torch.Tensor, counted: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            chosen, _ = self._chosen_and_entropy(indices)
        return (chosen * self._counted(indices, counted)).sum(dim=1).double()

    def entropy(self, indices: torch.Tensor, counted: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) the sum over active (or `counted`) decisions of each step's entropy given the
        architecture's earlier tokens (the controller's entropy along that path)."""
        with torch.no_grad():
            _, entropy = self._chosen_and_entropy(indices)
        return (entropy * self._counted(indices, counted)).sum(dim=1).double()

    def update(
        self,
        indices: torch.Tensor,
        advantages: torch.Tensor,
        counted: torch.Tensor,
        lr: float,
        entropy_coefficient: float = 0.0,
    ) -> None:
        """One Adam step on mean_k(−A_k·Σ_t log π(a_t | a_<t) − c·H_k) over the counted
        decisions; `lr` is this step's rate (0 during an RL delay: Adam's moments still move)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        chosen, entropy = self._chosen_and_entropy(indices)
        mask = self._counted(indices, counted).to(chosen.dtype)
        log_prob = (chosen * mask).sum(dim=1)
        loss = -(advantages.to(self.device, chosen.dtype).detach() * log_prob)
        if entropy_coefficient:
            loss = loss - entropy_coefficient * (entropy * mask).sum(dim=1)
        self.optimizer.zero_grad()
        loss.mean().backward()
        self.optimizer.step()

    def tensors(self) -> list[torch.Tensor]:
        return [p.detach() for p in self.params]

    def state_dict(self) -> dict[str, Any]:
        return {
            "parameters": [p.detach().clone() for p in self.params],
            "adam": copy.deepcopy(self.optimizer.state_dict()),  # not the live moments
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for parameter, value in zip(self.params, state["parameters"], strict=True):
                parameter.copy_(value)
        self.optimizer.load_state_dict(state["adam"])


class AnchorLSTMController(LSTMController):
    """NAS-RL's controller over a space with skip-connection decisions (Zoph & Le 2017, §3.3):
    after each layer's tokens (filter height, width, stride, filters) the LSTM takes one more
    step, the layer's **anchor point**, whose output h_i is kept. Whether earlier layer j is an
    input of layer i is an independent Bernoulli with

        P(j → i) = sigmoid(vᵀ tanh(W_prev·h_j + W_curr·h_i)),

    one per earlier layer (any subset, the empty one included; not a softmax over j). It is
    stored as two logits [0, a] (the same Bernoulli), so ENAS's optional shaping applies to a.
    The paper does not say what is fed back after an anchor point; nascli feeds ENAS's choice:
    the mean Σ_selected h_j / (1 + #selected) (for the first layer, the start input)."""

    def __init__(
        self,
        space: SearchSpace,
        settings: ControllerSettings,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ):
        super().__init__(space, settings, device, seed)
        if any(ancestors(space)):
            raise ValueError(f"{space.name}: anchor points need a space without nested choices")
        self.plan = anchor_plan(space, self.order.tolist())
        hidden = settings.hidden
        self.w_prev, self.w_curr, self.v = (
            self._uniform(hidden, hidden),
            self._uniform(hidden, hidden),
            self._uniform(hidden),
        )
        extra = [self.w_prev, self.w_curr, self.v]
        self.params += extra
        self.optimizer.add_param_group({"params": extra})

    def _walk(
        self,
        num: int,
        tokens: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        temperature: float | None = None,
        greedy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the controller over every step: the (B, D) tokens (sampled, greedy, or the given
        `tokens` in controller order, fed back) and the (B, D, C) log-probabilities of every
        decision's options, in controller order."""
        width = self.valid.shape[1]
        out = torch.zeros(num, len(self.order), dtype=torch.long, device=self.device)
        logps: list[torch.Tensor | None] = [None] * len(self.order)
        x = self.start.expand(num, 1, -1)
        state = None
        anchors: list[torch.Tensor] = []
        keys: list[torch.Tensor] = []

        def choose(t: int, logits: torch.Tensor) -> torch.Tensor:
            logp = logits.log_softmax(dim=1)
            logps[t] = torch.nn.functional.pad(logp, (0, width - logp.shape[1]), value=-torch.inf)
            if tokens is not None:
                token = tokens[:, t]
            elif greedy:
                token = logp.argmax(dim=1)
            else:
                detached = logp.detach().float()
                probs = (detached / temperature if temperature else detached).softmax(dim=1)
                token = torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0]
            out[:, t] = token.to(self.device)
            return out[:, t]

        for layer_tokens, layer_inputs in self.plan:
            for t in layer_tokens:
                output, state = self.lstm(x, state)
                token = choose(t, self._logits(t, output[:, 0]))
                x = self.embedding[self.offsets[t] + token].unsqueeze(1)
            output, state = self.lstm(x, state)  # the layer's anchor point
            h = output[:, 0]
            query = h @ self.w_curr.T
            total = torch.zeros_like(h)
            count = torch.zeros(num, 1, device=self.device)
            for t, source in layer_inputs:
                a = torch.tanh(keys[source] + query) @ self.v
                logits = torch.stack([torch.zeros_like(a), a], dim=1)
                token = choose(t, self._shape(logits, self.valid[t, :2]))
                picked = token.to(h.dtype).unsqueeze(1)
                total, count = total + picked * anchors[source], count + picked
            x = (total / (1 + count)).unsqueeze(1) if anchors else self.start.expand(num, 1, -1)
            anchors.append(h)
            keys.append(h @ self.w_prev.T)
        return out, torch.stack(logps, dim=1)

    @torch.no_grad()
    def _decode(
        self,
        num: int,
        generator: torch.Generator | None,
        temperature: float | None,
        greedy: bool,
    ) -> torch.Tensor:
        tokens, _ = self._walk(num, None, generator, temperature, greedy)
        indices = torch.empty_like(tokens)
        indices[:, self.order] = tokens
        return indices

    def _teacher_forced(self, indices: torch.Tensor) -> torch.Tensor:
        tokens = indices.to(self.device)[:, self.order]
        return self._walk(len(indices), tokens)[1]


def anchor_plan(
    space: SearchSpace, order: list[int]
) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """Per layer, in network order: the controller steps of its tokens, then (step, source
    layer) of its skip-connection decisions. Decision paths name them: `<layer>.inputs.<j>`."""
    layers: dict[str, tuple[list[int], list[tuple[int, int]]]] = {}
    for t, position in enumerate(order):
        decision = space.decisions[position]
        if decision.tag == INPUT:
            layer, _, source = decision.path.rpartition(".inputs.")
            layers[layer][1].append((t, int(source)))
        else:
            layer = decision.path.rpartition(".")[0]
            if layer not in layers:
                layers[layer] = ([], [])
            if layers[layer][1]:
                raise ValueError(f"{decision.path}: a layer's token after its skip connections")
            layers[layer][0].append(t)
    return list(layers.values())
