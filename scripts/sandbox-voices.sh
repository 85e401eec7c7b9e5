#!/bin/sh
# Regenerates the sandbox person's utterances, assets/sandbox/*.ulaw: raw G.711 μ-law, 8 kHz,
# mono, no header, as the sandbox carrier sends them into a call (the server embeds them with
# include_bytes!, so nothing is read at run time). Voiced by flite's `awb`, the flite voice that
# speech recognisers transcribe best (all four test sentences right, even after the telephone
# band). The text of each file is in src/sandbox/person.rs, which must be kept in step.
#
#   apt-get install -y flite sox && scripts/sandbox-voices.sh
set -eu
cd "$(dirname "$0")/../assets/sandbox"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
say() {
    name=$1
    shift
    flite -voice awb -t "$*" -o "$tmp/$name.wav"
    # Trim the leading and trailing silence flite leaves, then to telephone μ-law.
    sox "$tmp/$name.wav" -r 8000 -c 1 -e mu-law -b 8 -t raw "$name.ulaw" \
        silence 1 0.02 0.5% reverse silence 1 0.02 0.5% reverse
}
say hello "Yes, this is Ajay speaking."
say goodbye "Okay, thank you. Goodbye."
say interrupt "Sorry, I have to go now. Goodbye."
say offer "Tell me about the offer you have for me."
say mhm "Mm hmm."
say yeah "Yeah."
say person "Can I speak to a person, please?"
ls -l ./*.ulaw
