"""`mft-train generate --model DIR --prompt TEXT`: answer a question with a trained model."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="model folder, merged model or checkpoint (full, or LoRA adapter on its base model)")
    parser.add_argument("--base", help="base model folder of a LoRA checkpoint (default: base_model_name_or_path "
                                       "of its adapter_config.json, a path in the training pod)")
    parser.add_argument("--prompt", required=True, action="append",
                        help="the question; repeat for a batch")
    parser.add_argument("--system", help="optional system turn placed before the question")
    parser.add_argument("--role-start", help="role start marker (default: the one the model was trained with, "
                                             "from its trainer_state.json or mft_prompt.json, else <|role_start|>)")
    parser.add_argument("--role-end", help="role end marker (default: as for --role-start, else <|role_end|>)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="most tokens generated per answer (default 256)")
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy/beam decoding")
    parser.add_argument("--top-p", type=float, default=0.95,
                        help="with --do-sample, sample from the smallest set of tokens this likely (default 0.95)")
    parser.add_argument("--temperature", type=float, default=0.1,
                        help="with --do-sample, divide the logits by this; lower is more deterministic (default 0.1)")
    parser.add_argument("--num-beams", type=int, default=1, help="beam search width; 1 decodes greedily (default 1)")
    parser.add_argument("--device", help="torch device to generate on (default: cuda when available, else cpu)")


def run(args: argparse.Namespace) -> int:
    from mft_trainer.generation import Sampling, generate, load, prompt_format, prompt_ids

    try:
        model, tokenizer = load(args.model, args.device, base=args.base)
    except (OSError, ValueError) as exc:
        print(f"mft-train generate: {exc}", file=sys.stderr)
        return 1
    data = prompt_format(args.model, role_start=args.role_start, role_end=args.role_end)
    prompts = [prompt_ids(tokenizer, question, system=args.system, data_config=data) for question in args.prompt]
    sampling = Sampling(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, top_p=args.top_p,
                        temperature=args.temperature, num_beams=args.num_beams)
    for answer in generate(model, tokenizer, prompts, sampling):
        print(answer)
    return 0
