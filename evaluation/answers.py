"""Turning free-form answers into what the official scorers compare: yes/no, an option letter, and the
VQA answer normalisation (EvalAI's, as TextVQA's and VQAv2's evaluators apply it)."""

import re

from .prompts import OPTION_LETTERS


def pope_yes_no(text: str) -> str:
    """LLaVA's eval_pope.py: the first sentence, commas dropped, 'no' when it holds No, not or no."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if "No" in words or "not" in words or "no" in words else "yes"


def mme_yes_no(text: str) -> str:
    """MME's eval_tool (calculation.py): yes or no, by the whole answer or its first four characters."""
    text = text.lower().strip()
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    return "yes" if "yes" in prefix else "no" if "no" in prefix else "other"


REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
            "I'm sorry, but without the image provided", "Cannot determine the answer")


def scienceqa_letter(text: str, options: list[str]) -> str | None:
    """LLaVA's eval_science_qa.py (the rule its published ScienceQA numbers use): a bare letter, a letter then
    ". ", or exactly one "The answer is X." in the text; any other answer, or a letter past the options, is
    wrong (None)."""
    letters = "ABCDE"  # the script's fixed option list
    if text in letters:
        answer = text
    elif len(text) >= 3 and text[0] in letters and text[1:3] == ". ":
        answer = text[0]
    else:
        found = re.findall(r"The answer is ([A-Z]).", text)
        answer = found[0] if len(found) == 1 else None
    return answer if answer is not None and answer in letters[: len(options)] else None


def mmbench_letter(text: str, options: list[str]) -> str | None:
    """VLMEvalKit's rule-based matching (`can_infer`: can_infer_option, then can_infer_text), MMBench's own
    reading of an answer before its optional GPT step: exactly one option letter among the answer's words
    (punctuation split off; an "A" in an answer of more than three words may be the article, so not by letter),
    else the one option whose text the answer contains. A refusal, or a lone "Z", is no option (None)."""
    if any(refusal in text for refusal in REFUSALS):
        return None
    letters = OPTION_LETTERS[: len(options)]
    words = text
    for c in ".()[],:;!*#{}":
        words = words.replace(c, " ")
    words = words.split()
    named = [letter for letter in letters if letter in words]
    if len(named) == 1 and not ("A" in words and len(words) > 3):
        return named[0]
    if not named and "Z" in words:
        return None
    lowered = text.lower()
    by_text = [letter for letter, option in zip(letters, options, strict=True) if str(option).lower() in lowered]
    return by_text[0] if len(by_text) == 1 else None


def option_letter(text: str, options: list[str]) -> str | None:
    """The lenient reading (`--answer_rule lenient`): a leading letter ("B", "B.", "(B) ...", "B: ..."), else the
    one valid letter standing alone in it, else the one option whose text it contains; None if unsure."""
    letters = OPTION_LETTERS[: len(options)]
    text = text.strip()
    lead = re.match(rf"^\(?([{letters}])(?:[\).:,\s]|$)", text)
    if lead:
        return lead.group(1)
    alone = set(re.findall(rf"(?<![A-Za-z])([{letters}])(?![A-Za-z])", text))
    if len(alone) == 1:
        return alone.pop()
    lowered = text.lower()
    named = [letter for letter, option in zip(letters, options, strict=True) if option.lower() in lowered]
    return named[0] if len(named) == 1 else None


ANSWER_RULES = ("official", "lenient")


def letter_reader(official, rule: str):
    """The benchmark's official reader, or the lenient one."""
    if rule not in ANSWER_RULES:
        raise ValueError(f"--answer_rule is one of {', '.join(ANSWER_RULES)}, not {rule!r}")
    return official if rule == "official" else option_letter


# ---- the VQA answer normalisation (EvalAIAnswerProcessor) ----

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
           "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
PUNCTUATION = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
               "!"]


def normalize_vqa_answer(text: str) -> str:
    """EvalAI's answer processor, step for step (its quirks included, so scores match the leaderboards)."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    out = text
    for p in PUNCTUATION:
        if (p + " " in text or " " + p in text) or COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = PERIOD_STRIP.sub("", out, int(re.UNICODE))  # the original passes re.UNICODE as the count
    words = [NUMBERS.get(w, w) for w in out.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """min(#humans who gave the answer / 3, 1), averaged over the 10 leave-one-out subsets of the answers."""
    truth = [normalize_vqa_answer(a) for a in answers]
    pred = normalize_vqa_answer(prediction)
    scores = []
    for i in range(len(truth)):
        others = truth[:i] + truth[i + 1:]
        scores.append(min(1.0, sum(a == pred for a in others) / 3))
    return sum(scores) / len(scores)
