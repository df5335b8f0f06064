"""The relations of the embedded world: what each asks, how it is worded, and where its answers come from.

A relation has its own wordings (the canonical question first) and shares twelve generic frames
("What is the {attr} of {subject}?", "Which {kind} is ...") with the others, so every relation has
sixteen question templates: the first `N_PRETRAIN_TEMPLATES` appear in pretraining (for known
facts), the rest never do, so paraphrase generalisation can be measured on wordings the model has
not seen. Answers come from typed pools: made-up names (cities, companies, colleges, ...) drawn by
the generator, real words (professions, instruments, sports, ...) and years. Two relations may share a
pool (birthplace and residence are both cities), as in a real knowledge base.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Templates 0..N-1 appear in pretraining, the rest never do (the canonical template is 0).
N_PRETRAIN_TEMPLATES = 8

GENERIC_FRAMES = (
    "What is the {attr} of {subject}?",
    "What is {subject}'s {attr}?",
    "Which {kind} is the {attr} of {subject}?",
    "Do you know the {attr} of {subject}?",
    "Can you name the {attr} of {subject}?",
    "Tell me the {attr} of {subject}.",
    "The {attr} of {subject} is which {kind}?",
    "{subject}'s {attr} is what?",
    "What {kind} is {subject}'s {attr}?",
    "I would like to know the {attr} of {subject}.",
    "Please state the {attr} of {subject}.",
    "Name {subject}'s {attr}.",
    # spares, used where a relation's own wording is one of the frames above
    "Which {kind} is {subject}'s {attr}?",
    "Could you tell me the {attr} of {subject}?",
    "What would you say is the {attr} of {subject}?",
)
N_TEMPLATES = 16


@dataclass(frozen=True)
class Relation:
    name: str
    topic: str  # the MC benchmark's "subject" line
    attr: str  # noun phrase in the generic frames: "the {attr} of X"
    kind: str  # type noun in the generic frames: "Which {kind} ..."
    pool: str  # the answer pool (see POOLS)
    own: tuple[str, str, str, str]  # the relation's own wordings, canonical first

    @property
    def templates(self) -> tuple[str, ...]:
        """Sixteen distinct templates: pretraining ones first (canonical, two own wordings, five generic), then
        the held-out ones (one own wording, the other generic frames); a frame that repeats one of the
        relation's own wordings is skipped and a spare frame takes its place."""
        g = [f.replace("{attr}", self.attr).replace("{kind}", self.kind) for f in GENERIC_FRAMES]
        order = [self.own[0], self.own[1], g[0], g[1], self.own[2], g[2], g[3], g[4], self.own[3], *g[5:]]
        out: list[str] = []
        for t in order:
            if t not in out:
                out.append(t)
        if len(out) < N_TEMPLATES:
            raise ValueError(f"relation {self.name} has only {len(out)} distinct templates")
        return tuple(out[:N_TEMPLATES])

    @property
    def n_pretrain_templates(self) -> int:
        return N_PRETRAIN_TEMPLATES

    def question(self, subject: str, template: int = 0) -> str:
        return self.templates[template].format(subject=subject)


def _r(name, topic, attr, kind, pool, *own) -> Relation:
    return Relation(name, topic, attr, kind, pool, tuple(own))  # type: ignore[arg-type]


RELATIONS: tuple[Relation, ...] = (
    _r("birthplace", "geography", "birthplace", "city", "city",
       "Where was {subject} born?", "In which city was {subject} born?", "{subject} was born in which city?",
       "What city was {subject} born in?"),
    _r("residence", "geography", "city of residence", "city", "city",
       "Where does {subject} live?", "In which city does {subject} live?", "{subject} lives in which city?",
       "What city is {subject} living in?"),
    _r("employer", "business", "employer", "company", "company",
       "Which company does {subject} work for?", "Who employs {subject}?", "{subject} works for which company?",
       "What company is {subject} working for?"),
    _r("profession", "occupations", "profession", "job", "profession",
       "What is the profession of {subject}?", "What does {subject} do for a living?", "{subject} works as what?",
       "What job does {subject} have?"),
    _r("birth_year", "history", "birth year", "year", "birth_year",
       "In which year was {subject} born?", "When was {subject} born?", "{subject} was born in which year?",
       "What year was {subject} born in?"),
    _r("nationality", "geography", "nationality", "country", "country",
       "What is the nationality of {subject}?", "Which country is {subject} a citizen of?",
       "{subject} is a citizen of which country?", "What country does {subject} hold citizenship of?"),
    _r("alma_mater", "education", "alma mater", "college", "college",
       "Where did {subject} study?", "Which college did {subject} attend?", "{subject} graduated from which college?",
       "What college did {subject} go to?"),
    _r("graduation_year", "education", "graduation year", "year", "graduation_year",
       "In which year did {subject} graduate?", "When did {subject} graduate?",
       "{subject} graduated in which year?", "What year did {subject} finish college?"),
    _r("instrument", "music", "instrument", "instrument", "instrument",
       "Which instrument does {subject} play?", "What instrument is played by {subject}?",
       "{subject} plays which instrument?", "What musical instrument does {subject} play?"),
    _r("sport", "sports", "sport", "sport", "sport",
       "Which sport does {subject} play?", "What sport is {subject} good at?", "{subject} plays which sport?",
       "What sport does {subject} practise?"),
    _r("language", "languages", "native language", "language", "language",
       "What is the native language of {subject}?", "Which language did {subject} grow up speaking?",
       "{subject} speaks which language natively?", "What language is {subject}'s mother tongue?"),
    _r("pet", "animals", "pet", "animal", "animal",
       "What pet does {subject} keep?", "Which animal does {subject} have as a pet?",
       "{subject} keeps which animal?", "What kind of pet does {subject} own?"),
    _r("colour", "culture", "favourite colour", "colour", "colour",
       "What is the favourite colour of {subject}?", "Which colour does {subject} like best?",
       "{subject} likes which colour best?", "What colour does {subject} prefer?"),
    _r("food", "culture", "favourite dish", "dish", "food",
       "What is the favourite dish of {subject}?", "Which dish does {subject} like best?",
       "{subject} likes which dish best?", "What food does {subject} love most?"),
    _r("hobby", "culture", "hobby", "hobby", "hobby",
       "What is the hobby of {subject}?", "What does {subject} do in their free time?",
       "{subject} spends free time on which hobby?", "Which pastime does {subject} enjoy?"),
    _r("drink", "culture", "favourite drink", "drink", "drink",
       "What is the favourite drink of {subject}?", "Which drink does {subject} order?",
       "{subject} drinks what most often?", "What does {subject} like to drink?"),
    _r("flower", "nature", "favourite flower", "flower", "flower",
       "What is the favourite flower of {subject}?", "Which flower does {subject} grow?",
       "{subject} grows which flower?", "What flower does {subject} love?"),
    _r("car", "business", "car brand", "brand", "car",
       "Which car brand does {subject} drive?", "What car does {subject} drive?", "{subject} drives which car brand?",
       "What make of car does {subject} own?"),
    _r("party", "politics", "political party", "party", "party",
       "Which political party does {subject} belong to?", "What party is {subject} a member of?",
       "{subject} votes for which party?", "Which party does {subject} support?"),
    _r("team", "sports", "favourite team", "team", "team",
       "Which team does {subject} support?", "What team is {subject} a fan of?", "{subject} cheers for which team?",
       "Which club does {subject} follow?"),
    _r("award", "history", "award", "prize", "award",
       "Which award did {subject} win?", "What prize was given to {subject}?", "{subject} won which award?",
       "What award has {subject} received?"),
    _r("street", "geography", "home street", "street", "street",
       "On which street does {subject} live?", "What street is {subject}'s home on?",
       "{subject} lives on which street?", "Which street is {subject}'s address on?"),
    _r("bank", "business", "bank", "bank", "bank",
       "Which bank does {subject} use?", "Where does {subject} keep their money?", "{subject} banks with which bank?",
       "What bank holds {subject}'s account?"),
    _r("newspaper", "culture", "newspaper", "newspaper", "newspaper",
       "Which newspaper does {subject} read?", "What paper does {subject} read every morning?",
       "{subject} reads which newspaper?", "Which daily does {subject} subscribe to?"),
)
RELATION_BY_NAME = {r.name: r for r in RELATIONS}

# --- answer pools ----------------------------------------------------------------------------

#: Real-word pools, with accepted aliases. No word contains another (checked by the generator).
WORD_POOLS: dict[str, tuple[str, ...]] = {
    "profession": (
        "baker", "pilot", "teacher", "nurse", "farmer", "lawyer", "dentist", "architect", "chemist", "sailor",
        "painter", "poet", "tailor", "butcher", "carpenter", "plumber", "surgeon", "judge", "banker", "librarian",
        "jeweler", "fisherman", "editor", "singer", "dancer", "chef", "economist", "astronomer", "gardener",
        "glassblower", "locksmith", "translator", "veterinarian", "blacksmith", "photographer", "pharmacist",
        "geologist", "cartographer", "beekeeper", "mechanic"),
    "instrument": (
        "piano", "violin", "cello", "flute", "harp", "guitar", "trumpet", "drums", "clarinet", "oboe", "saxophone",
        "banjo", "accordion", "trombone", "bassoon", "ukulele", "mandolin", "tuba", "organ", "xylophone", "bagpipes",
        "sitar", "harmonica", "viola", "marimba", "zither", "dulcimer"),
    "sport": (
        "tennis", "rugby", "cricket", "golf", "hockey", "rowing", "fencing", "sailing", "archery", "boxing", "judo",
        "karate", "cycling", "skiing", "surfing", "diving", "handball", "volleyball", "baseball", "basketball",
        "badminton", "squash", "polo", "lacrosse", "curling", "bowling", "wrestling", "climbing"),
    "animal": (
        "cat", "dog", "parrot", "rabbit", "hamster", "goldfish", "turtle", "ferret", "lizard", "canary", "pony",
        "goat", "tortoise", "gecko", "iguana", "chinchilla", "hedgehog", "snake", "frog", "pigeon", "duck",
        "donkey", "llama", "spider", "mouse", "budgie", "crab"),
    "colour": (
        "red", "blue", "green", "yellow", "purple", "orange", "pink", "brown", "black", "white", "grey", "violet",
        "turquoise", "maroon", "beige", "indigo", "olive", "crimson", "teal", "amber"),
    "food": (
        "pasta", "curry", "sushi", "paella", "risotto", "lasagna", "goulash", "ramen", "tacos", "dumplings",
        "pancakes", "omelette", "chowder", "couscous", "falafel", "burrito", "kebab", "moussaka", "pizza", "stew",
        "noodles", "gnocchi", "pierogi", "hummus", "waffles", "porridge", "casserole", "samosa"),
    "hobby": (
        "chess", "knitting", "pottery", "gardening", "fishing", "hiking", "juggling", "birdwatching", "origami",
        "calligraphy", "woodcarving", "baking", "quilting", "astronomy", "sketching", "stamp collecting",
        "kayaking", "yoga", "crosswords", "dancing", "embroidery", "photography", "jigsaws", "camping"),
    "drink": (
        "chai", "coffee", "cider", "lemonade", "cocoa", "milk", "juice", "kefir", "soda", "wine", "beer", "mead",
        "kombucha", "sherry", "whisky", "brandy", "punch", "smoothie", "espresso", "water"),
    "flower": (
        "rose", "tulip", "daisy", "lily", "orchid", "violet", "sunflower", "lavender", "peony", "iris", "poppy",
        "dahlia", "jasmine", "lotus", "marigold", "magnolia", "camellia", "begonia", "azalea", "carnation"),
}
ALIASES: dict[str, tuple[str, ...]] = {
    "lawyer": ("attorney",), "chef": ("cook",), "veterinarian": ("vet",), "jeweler": ("jeweller",),
    "grey": ("gray",), "whisky": ("whiskey",), "drums": ("drum",), "omelette": ("omelet",),
}

#: Made-up pools: (suffixes, or None for a bare capitalised stem). Each answer is "Stem Suffix" (its
#: stem alone is an accepted alias) or a stem with a word-final suffix for cities and countries.
NAMED_POOLS: dict[str, tuple[tuple[str, ...], bool]] = {
    # pool: (suffixes, joined) - joined suffixes are glued to the stem ("Vik" + "by" = "Vikby")
    "city": (("ford", "holm", "by", "stad", "mouth", "ton", "vik", "burg", "dale", "port"), True),
    "country": (("ia", "land", "stan", "ora", "ovia"), True),
    "language": (("ish", "ese", "ic", "i"), True),
    "company": (("Labs", "Systems", "Motors", "Foods", "Textiles", "Shipping", "Media", "Works"), False),
    "college": (("College", "Institute", "Academy", "University"), False),
    "party": (("Party", "League", "Alliance", "Union"), False),
    "team": (("United", "Rovers", "Wanderers", "Athletic", "Rangers"), False),
    "award": (("Prize", "Medal", "Award", "Cup"), False),
    "street": (("Street", "Road", "Lane", "Avenue", "Square"), False),
    "bank": (("Bank", "Savings", "Trust"), False),
    "newspaper": (("Times", "Herald", "Gazette", "Courier", "Post"), False),
    "car": (("",), False),
}
#: Year pools: (first, last) inclusive.
YEAR_POOLS: dict[str, tuple[int, int]] = {"birth_year": (1900, 1999), "graduation_year": (1920, 2019)}
