# bash completion for ponder (generated from the CLI by `python -m ponder.cli.completion`; do not edit)
_ponder() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" cmd="" i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${COMP_WORDS[i]}" in
            ask|backends|batch|cache|chat|config|doctor|history|models|plan|pull|solve) cmd="${COMP_WORDS[i]}"; break ;;
        esac
    done
    case "$cmd" in
        "")
            case "$prev" in
            esac
            COMPREPLY=($(compgen -W "--debug --version --help -h ask backends batch cache chat config doctor history models plan pull solve" -- "$cur")) ;;
        "ask")
            case "$prev" in
                --model|-m) compopt -o filenames; COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --backend) COMPREPLY=($(compgen -W "auto mlx llama.cpp" -- "$cur")); return ;;
                --ctx) COMPREPLY=(); return ;;
                --threads|-t) COMPREPLY=(); return ;;
                --server) COMPREPLY=(); return ;;
                --timeout) COMPREPLY=(); return ;;
                --model-kind) COMPREPLY=($(compgen -W "auto reasoning plain" -- "$cur")); return ;;
                --draft) compopt -o filenames; COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --temperature) COMPREPLY=(); return ;;
                --top-p) COMPREPLY=(); return ;;
                --max-tokens) COMPREPLY=(); return ;;
                --seed) COMPREPLY=(); return ;;
                --speculate) COMPREPLY=($(compgen -W "auto ngram draft off" -- "$cur")); return ;;
                --think-budget) COMPREPLY=(); return ;;
                --budget-message) COMPREPLY=(); return ;;
                --on-loop) COMPREPLY=($(compgen -W "answer stop continue" -- "$cur")); return ;;
                --reasoning) COMPREPLY=($(compgen -W "show collapse hide" -- "$cur")); return ;;
                --schema) COMPREPLY=(); return ;;
                --choice) COMPREPLY=(); return ;;
                --lang) COMPREPLY=(); return ;;
            esac
            COMPREPLY=($(compgen -W "--model -m --backend --ctx --threads -t --server --timeout --model-kind --no-prompt-cache --draft --temperature --top-p --max-tokens --seed --speculate --think-budget --no-think --budget-message --on-loop --reasoning --show-reasoning --hide-reasoning --stats --json --jsonl --schema --choice --extract -x --extract-last --lang --no-log --debug --help -h" -- "$cur")) ;;
        "backends")
            case "$prev" in
                --server) COMPREPLY=(); return ;;
            esac
            COMPREPLY=($(compgen -W "--json --server --help -h" -- "$cur")) ;;
        "batch")
            case "$prev" in
                --output|-o) compopt -o filenames; COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --samples|-n) COMPREPLY=(); return ;;
                --parallel|-P) COMPREPLY=(); return ;;
                --model|-m) compopt -o filenames; COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --backend) COMPREPLY=($(compgen -W "auto mlx llama.cpp" -- "$cur")); return ;;
                --ctx) COMPREPLY=(); return ;;
                --threads|-t) COMPREPLY=(); return ;;
                --server) COMPREPLY=(); return ;;
                --timeout) COMPREPLY=(); return ;;
                --model-kind) COMPREPLY=($(compgen -W "auto reasoning plain" -- "$cur")); return ;;
                --draft) compopt -o filenames; COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --temperature) COMPREPLY=(); return ;;
                --top-p) COMPREPLY=(); return ;;
                --max-tokens) COMPREPLY=(); return ;;
                --seed) COMPREPLY=(); return ;;
                --speculate) COMPREPLY=($(compgen -W "auto ngram draft off" -- "$cur")); return ;;
                --think-budget) COMPREPLY=(); return ;;
                --plot) COMPREPLY=(); return ;;
                --budget-message) COMPREPLY=(); return ;;
                --on-loop) COMPREPLY=($(compgen -W "answer stop continue" -- "$cur")); return ;;
                --schema) COMPREPLY=(); return ;;
                --choice) COMPREPLY=(); return ;;
            esac
            COMPREPLY=($(compgen -W "--output -o --samples -n --parallel -P --model -m --backend --ctx --threads -t --server --timeout --model-kind --no-prompt-cache --draft --temperature --top-p --max-tokens --seed --speculate --think-budget --plot --no-think --budget-message --on-loop --schema --choice --help -h" -- "$cur") $(compgen -f -- "$cur")) ;;
        "cache")
            case "$prev" in
            esac
            COMPREPLY=($(compgen -W "--help -h" -- "$cur")) ;;
        "chat")
            case "$prev" in
                --model|-m) compopt -o filenames; COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --backend) COMPREPLY=($(compgen -W "auto mlx llama.cpp" -- "$cur")); return ;;
                --ctx) COMPREPLY=(); return ;;
                --threads|-t) COMPREPLY=(); return ;;
                --server) COMPREPLY=(); return ;;
                --timeout) COMPREPLY=(); return ;;
                --model-kind) COMPREPLY=($(compgen -W "auto reasoning plain" -- "$cur")); return ;;
                --draft) compopt -o filenames; COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --temperature) COMPREPLY=(); return ;;
                --top-p) COMPREPLY=(); return ;;
                --max-tokens) COMPREPLY=(); return ;;
                --seed) COMPREPLY=(); return ;;
                --speculate) COMPREPLY=($(compgen -W "auto ngram draft off" -- "$cur")); return ;;
                --think-budget) COMPREPLY=(); return ;;
                --budget-message) COMPREPLY=(); return ;;
                --on-loop) COMPREPLY=($(compgen -W "answer stop continue" -- "$cur")); return ;;
                --reasoning) COMPREPLY=($(compgen -W "show collapse hide" -- "$cur")); return ;;
                --resume) COMPREPLY=(); return ;;
                --on-full) COMPREPLY=($(compgen -W "drop compact refuse" -- "$cur")); return ;;
            esac
            COMPREPLY=($(compgen -W "--model -m --backend --ctx --threads -t --server --timeout --model-kind --no-prompt-cache --draft --temperature --top-p --max-tokens --seed --speculate --think-budget --no-think --budget-message --on-loop --reasoning --show-reasoning --hide-reasoning --continue -c --resume --no-log --on-full --debug --help -h" -- "$cur")) ;;
        "config")
            case "$prev" in
            esac
            COMPREPLY=($(compgen -W "--help -h" -- "$cur")) ;;
        "doctor")
            case "$prev" in
                --server) COMPREPLY=(); return ;;
            esac
            COMPREPLY=($(compgen -W "--server --help -h" -- "$cur")) ;;
        "history")
            case "$prev" in
                --limit|-n) COMPREPLY=(); return ;;
            esac
            COMPREPLY=($(compgen -W "--limit -n --help -h" -- "$cur")) ;;
        "models")
            case "$prev" in
            esac
            COMPREPLY=($(compgen -W "--json --help -h" -- "$cur")) ;;
        "plan")
            case "$prev" in
                --model|-m) compopt -o filenames; COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --ctx) COMPREPLY=(); return ;;
                --quant) COMPREPLY=(); return ;;
                --kv-type) COMPREPLY=(); return ;;
                --memory) COMPREPLY=(); return ;;
                --samples|-n) COMPREPLY=(); return ;;
            esac
            COMPREPLY=($(compgen -W "--model -m --ctx --quant --kv-type --memory --samples -n --help -h" -- "$cur")) ;;
        "pull")
            case "$prev" in
                --backend) COMPREPLY=($(compgen -W "auto mlx llama.cpp" -- "$cur")); return ;;
            esac
            COMPREPLY=($(compgen -W "--backend --list --with-draft --help -h" -- "$cur")) ;;
        "solve")
            case "$prev" in
                --samples|-n) COMPREPLY=(); return ;;
                --parallel|-P) COMPREPLY=(); return ;;
                --confidence) COMPREPLY=(); return ;;
                --model|-m) compopt -o filenames; COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --backend) COMPREPLY=($(compgen -W "auto mlx llama.cpp" -- "$cur")); return ;;
                --ctx) COMPREPLY=(); return ;;
                --threads|-t) COMPREPLY=(); return ;;
                --server) COMPREPLY=(); return ;;
                --timeout) COMPREPLY=(); return ;;
                --model-kind) COMPREPLY=($(compgen -W "auto reasoning plain" -- "$cur")); return ;;
                --draft) compopt -o filenames; COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --temperature) COMPREPLY=(); return ;;
                --top-p) COMPREPLY=(); return ;;
                --max-tokens) COMPREPLY=(); return ;;
                --seed) COMPREPLY=(); return ;;
                --speculate) COMPREPLY=($(compgen -W "auto ngram draft off" -- "$cur")); return ;;
                --think-budget) COMPREPLY=(); return ;;
                --budget-message) COMPREPLY=(); return ;;
                --on-loop) COMPREPLY=($(compgen -W "answer stop continue" -- "$cur")); return ;;
                --reasoning) COMPREPLY=($(compgen -W "show collapse hide" -- "$cur")); return ;;
            esac
            COMPREPLY=($(compgen -W "--answer-only --samples -n --parallel -P --early-stop --confidence --model -m --backend --ctx --threads -t --server --timeout --model-kind --no-prompt-cache --draft --temperature --top-p --max-tokens --seed --speculate --think-budget --no-think --budget-message --on-loop --reasoning --show-reasoning --hide-reasoning --stats --json --jsonl --debug --help -h" -- "$cur")) ;;
    esac
}
complete -F _ponder ponder
