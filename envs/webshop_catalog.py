"""The synthetic WebShop catalogue and its BM25 search engine.

WebShop (Yao et al. 2022) scrapes 1.18M Amazon products and searches them with Pyserini's BM25.
Neither the data nor Java may be downloaded here, so this file *generates* a catalogue with the
same shape (ASIN-like id, title, price, category path, attributes, option groups, bullet points,
description) from a fixed catalogue seed, and ranks it with BM25 written in numpy over a term
index (postings lists), so one search is a `np.bincount` over the postings of the query's terms.

    catalog = get_catalog()                 # built once per process (< 0.1 s), then cached
    hits = catalog.search("cotton t-shirt machine washable")   # (<= 50,) product indices, best first
    catalog.products[hits[0]].title

BM25 (Robertson & Zaragoza 2009; Lucene's variant, as Pyserini/Anserini run it):
    score(q, d) = Σ_{t ∈ q} idf(t) · tf(t,d)·(k1 + 1) / (tf(t,d) + k1·(1 − b + b·|d|/avgdl))
    idf(t)      = ln(1 + (N − df(t) + 0.5) / (df(t) + 0.5))
Where: tf(t,d) term count in product d's title + attributes, |d| its token count, avgdl the mean
|d|, N the number of products, df(t) how many products hold t; k1 = 0.9, b = 0.4 (Anserini's
defaults, which WebShop's Pyserini searcher uses).

References:
  1) WebShop paper: https://arxiv.org/abs/2207.01206
  2) WebShop code (product fields, 50 search results): https://github.com/princeton-nlp/WebShop
  3) Anserini BM25 defaults: https://github.com/castorini/anserini

Deviations from WebShop:
  1. Products are generated from word lists per category (clothing, shoes, electronics, beauty,
     grocery, home), not scraped; titles never contain option values or attributes the product
     does not have, so the reward's "text fallback" checks cannot match by accident
     (tests/test_env_webshop.py checks this over the whole catalogue).
  2. Query terms are counted once (a set), and tokens are lowercase ASCII alphanumeric runs.
  3. `nouns` (used by the title part of the type reward) are the title's brand, material,
     product-type and audience words, known by construction instead of tagged by spaCy.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

SEARCH_RETURN_N = 50  # WebShop returns the top 50 hits of a search (engine.py)
BM25_K1, BM25_B = 0.9, 0.4  # Anserini defaults (reference 3)
_TOKEN_RE = re.compile(r"[a-z0-9]+")

# --- word lists: type -> (subcategory, min price, max price, option groups) -------------------
# Option values never share a token set with another value of the same group (so distinct values
# never fuzzy-match), and no brand/material/type word contains an option value or an attribute.
_CATEGORIES: dict[str, dict] = {
    "clothing": dict(
        brands=("Northpeak", "Velora", "Hartley", "Moxie", "Quinto", "Lumen", "Corvo", "Brisa"),
        adjectives=("classic", "slim fit", "oversized", "lightweight", "casual", "vintage", "soft", "athletic"),
        materials=("cotton", "fleece", "linen", "denim", "jersey", ""),
        audiences=("men", "women", "kids", ""),
        attributes=("machine washable", "button closure", "elastic waistband", "long sleeve", "short sleeve",
                    "moisture wicking", "quick drying", "wrinkle free", "drawstring closure", "regular fit"),
        options={"size": ("x-small", "small", "medium", "large", "x-large", "xx-large"),
                 "color": ("black", "white", "navy blue", "heather grey", "red", "olive green", "burgundy",
                           "light pink", "khaki", "mustard yellow")},
        types={"t-shirt": ("tops", 8, 30, ("size", "color")), "polo shirt": ("tops", 15, 45, ("size", "color")),
               "hoodie": ("tops", 20, 60, ("size", "color")), "cardigan": ("tops", 25, 70, ("size", "color")),
               "jeans": ("bottoms", 25, 80, ("size", "color")), "jogger pants": ("bottoms", 15, 50, ("size", "color")),
               "cargo shorts": ("bottoms", 12, 40, ("size",)), "maxi dress": ("dresses", 20, 75, ("size", "color")),
               "rain jacket": ("outerwear", 30, 120, ("size", "color")), "pajama set": ("sleepwear", 15, 45, ("size",))},
    ),
    "shoes": dict(
        brands=("Stridex", "Trailon", "Pavo", "Kestrel", "Solano", "Brio"),
        adjectives=("comfortable", "classic", "lightweight", "casual", "durable", "sporty"),
        materials=("leather", "suede", "mesh", "canvas", ""),
        audiences=("men", "women", "kids", ""),
        attributes=("non slip", "rubber sole", "arch support", "memory foam", "lace up closure",
                    "water resistant", "breathable", "cushioned insole"),
        options={"size": ("6", "6.5", "7", "7.5", "8", "8.5", "9", "9.5", "10", "10.5", "11", "12"),
                 "color": ("black", "white", "brown", "grey", "navy", "beige", "olive")},
        types={"running shoes": ("athletic", 30, 120, ("size", "color")), "sneakers": ("athletic", 25, 90, ("size", "color")),
               "hiking boots": ("boots", 45, 160, ("size", "color")), "ankle boots": ("boots", 35, 130, ("size", "color")),
               "sandals": ("casual", 12, 50, ("size", "color")), "loafers": ("casual", 30, 100, ("size",)),
               "slippers": ("casual", 10, 35, ("size", "color"))},
    ),
    "electronics": dict(
        brands=("Voltix", "Auralink", "Zentro", "Pixelon", "Kinetix", "Ampere"),
        adjectives=("portable", "compact", "premium", "ergonomic", "wireless", "smart"),
        materials=("aluminum", "plastic", ""),
        audiences=("",),
        attributes=("fast charging", "noise cancelling", "long battery life", "high definition", "plug and play",
                    "hands free", "easy to use", "water resistant"),
        options={"color": ("black", "white", "silver", "rose gold", "midnight blue"),
                 "style": ("standard edition", "travel bundle", "gift box")},
        types={"earbuds": ("audio", 20, 150, ("color", "style")), "bluetooth speaker": ("audio", 25, 200, ("color",)),
               "gaming headset": ("audio", 30, 180, ("color", "style")), "power bank": ("accessories", 15, 80, ("color",)),
               "phone charger": ("accessories", 8, 40, ("color", "style")), "laptop stand": ("computer", 18, 70, ()),
               "keyboard": ("computer", 20, 150, ("color", "style")), "mouse": ("computer", 10, 80, ("color",)),
               "webcam": ("computer", 25, 120, ("style",))},
    ),
    "beauty": dict(
        brands=("Lumiere", "Botanika", "Vessa", "Auralie", "Nordique", "Solea"),
        adjectives=("gentle", "nourishing", "hydrating", "luxury", "everyday", "natural looking"),
        materials=("",),
        audiences=("men", "women", ""),
        attributes=("long lasting", "paraben free", "cruelty free", "sulfate free", "sensitive skin",
                    "vegan formula", "travel size", "fragrance free"),
        options={"color": ("nude", "ruby", "coral", "berry", "mauve", "taupe"),
                 "scent": ("lavender", "vanilla", "coconut", "citrus", "unscented"),
                 "size": ("1 fl oz", "2 fl oz", "3.4 fl oz", "8 fl oz", "16 fl oz")},
        types={"lipstick": ("makeup", 6, 30, ("color",)), "eyeshadow palette": ("makeup", 10, 55, ("color",)),
               "nail polish": ("makeup", 5, 20, ("color", "size")), "face moisturizer": ("skin care", 10, 60, ("scent", "size")),
               "body lotion": ("skin care", 6, 30, ("scent", "size")), "sunscreen": ("skin care", 8, 35, ("size",)),
               "shampoo": ("hair care", 6, 35, ("scent", "size")), "hair serum": ("hair care", 10, 45, ("scent", "size"))},
    ),
    "grocery": dict(
        brands=("Harvestly", "Goldfield", "Pantrio", "Sunmeadow", "Orchardine", "Kettleby"),
        adjectives=("organic", "crunchy", "premium", "wholesome", "artisan", "roasted"),
        materials=("",),
        audiences=("",),
        attributes=("gluten free", "non gmo", "low sugar", "keto friendly", "high protein", "usda organic",
                    "kosher certified", "individually wrapped"),
        options={"flavor": ("vanilla", "sea salt", "cinnamon", "honey", "original", "mixed berry", "caramel", "spicy"),
                 "size": ("8 ounce", "12 ounce", "16 ounce", "pack of 6", "pack of 12")},
        types={"protein bars": ("snacks", 10, 40, ("flavor", "size")), "trail mix": ("snacks", 6, 25, ("flavor", "size")),
               "granola": ("breakfast", 5, 20, ("flavor", "size")), "herbal tea": ("beverages", 4, 20, ("flavor",)),
               "coffee beans": ("beverages", 8, 35, ("flavor", "size")), "beef jerky": ("snacks", 8, 30, ("flavor", "size")),
               "potato chips": ("snacks", 3, 15, ("flavor", "size")), "almond butter": ("pantry", 6, 22, ("size",)),
               "pasta sauce": ("pantry", 4, 15, ("flavor",))},
    ),
    "home": dict(
        brands=("Nestwell", "Casabella", "Loomcraft", "Hearthly", "Dovetail", "Maplery"),
        adjectives=("cozy", "modern", "elegant", "rustic", "minimalist", "decorative"),
        materials=("cotton", "linen", "bamboo", "microfiber", "velvet", ""),
        audiences=("",),
        attributes=("machine washable", "easy clean", "space saving", "living room", "fade resistant",
                    "eco friendly", "easy assemble", "wrinkle free"),
        options={"color": ("white", "ivory", "charcoal", "sage", "navy", "blush", "mustard"),
                 "size": ("twin", "full", "queen", "king")},
        types={"bed sheet set": ("bedding", 20, 90, ("color", "size")), "comforter": ("bedding", 35, 150, ("color", "size")),
               "throw pillow cover": ("decor", 8, 30, ("color",)), "bath towel set": ("bath", 15, 60, ("color",)),
               "shower curtain": ("bath", 10, 40, ("color",)), "blackout curtains": ("decor", 18, 70, ("color",)),
               "area rug": ("decor", 30, 200, ("color",)), "desk lamp": ("lighting", 15, 80, ()),
               "storage basket": ("storage", 10, 45, ("color",))},
    ),
}
_ASIN_CHARS = np.array(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"))  # (36,)


def tokenize(text: str) -> list[str]:
    """Lowercase ASCII alphanumeric runs: the tokens of both the index and the queries."""
    return _TOKEN_RE.findall(text.lower())


@dataclass(frozen=True, slots=True)
class Product:
    """One catalogue item, with the fields WebShop's reward reads (its names in comments)."""

    asin: str                         # 'asin', e.g. "B0K3J9QX2A"
    title: str                        # 'Title' (also the goal's 'name')
    price: float                      # product_prices[asin]
    category: str                     # 'category'
    query: str                        # 'query': the product type, e.g. "t-shirt"
    product_category: str             # 'product_category', "clothing › tops › t-shirt"
    attributes: tuple[str, ...]       # 'Attributes'
    options: dict[str, tuple[str, ...]]  # 'options': group -> values
    features: tuple[str, ...]         # 'BulletPoints'
    description: str                  # 'Description'
    phrase: str                       # the words an instruction uses: adjective, material, type, audience
    nouns: frozenset[str]             # title nouns for the type reward (deviation 3)
    text: str                         # lowercase title + bullets + description, for the fallback checks


class Catalog:
    """Products plus a BM25 term index: postings `post_doc`/`post_w` sliced by `term_ptr`."""

    def __init__(self, products: list[Product]) -> None:
        self.products = products
        self.by_asin = {p.asin.lower(): i for i, p in enumerate(products)}
        docs = [tokenize(p.title + " " + " ".join(p.attributes)) for p in products]
        self.vocab: dict[str, int] = {}
        doc_ids, term_ids = [], []
        for d, toks in enumerate(docs):
            for tok in toks:
                doc_ids.append(d)
                term_ids.append(self.vocab.setdefault(tok, len(self.vocab)))
        n, v = len(products), len(self.vocab)
        # One row per (term, doc) pair with its count, sorted by term: the postings lists.
        pair, tf = np.unique(np.asarray(term_ids, np.int64) * n + np.asarray(doc_ids), return_counts=True)  # (nnz,)
        post_term, post_doc = pair // n, pair % n                                  # (nnz,) each
        doc_len = np.bincount(doc_ids, minlength=n).astype(np.float64)             # (N,) |d|
        df = np.bincount(post_term, minlength=v)                                   # (V,) df(t)
        idf = np.log1p((n - df + 0.5) / (df + 0.5))                                # (V,)
        norm = BM25_K1 * (1.0 - BM25_B + BM25_B * doc_len / doc_len.mean())        # (N,)
        self.post_doc = post_doc                                                   # (nnz,)
        self.post_w = idf[post_term] * tf * (BM25_K1 + 1.0) / (tf + norm[post_doc])  # (nnz,) BM25 term weight
        self.term_ptr = np.concatenate([[0], np.cumsum(df)])                       # (V+1,)

    def __len__(self) -> int:
        return len(self.products)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every product for `query`: (N,) float64, 0 where no query term occurs."""
        terms = {self.vocab[t] for t in tokenize(query) if t in self.vocab}
        if not terms:
            return np.zeros(len(self.products))
        idx = np.concatenate([np.arange(self.term_ptr[t], self.term_ptr[t + 1]) for t in sorted(terms)])
        return np.bincount(self.post_doc[idx], weights=self.post_w[idx], minlength=len(self.products))  # (N,)

    def search(self, query: str, top_n: int = SEARCH_RETURN_N) -> np.ndarray:
        """Indices of the top `top_n` products with a positive score, best first; ties by index."""
        s = self.scores(query)                                                     # (N,)
        hit = np.flatnonzero(s > 0)                                                # (H,)
        order = np.lexsort((hit, -s[hit]))[:top_n]                                 # score desc, then index
        return hit[order]


def _build_products(seed: int, per_category: int) -> list[Product]:
    rng = np.random.default_rng(seed)
    products: list[Product] = []
    seen_titles, seen_asins = set(), set()
    for category, spec in _CATEGORIES.items():
        types = list(spec["types"])
        made = 0
        while made < per_category:
            kind = types[made % len(types)]  # round-robin keeps every type well stocked
            sub, lo, hi, groups = spec["types"][kind]
            # Draw indices, not strings: rng.choice on a tuple of str builds an array per call.
            brand, adj, mat, aud = (spec[k][int(rng.integers(len(spec[k])))]
                                    for k in ("brands", "adjectives", "materials", "audiences"))
            phrase = " ".join(w for w in (adj, mat, kind, f"for {aud}" if aud else "") if w)
            title = f"{brand} {phrase}"
            if title in seen_titles:  # unique titles make "search by title" well defined
                continue
            pool = spec["attributes"]
            attrs = tuple(sorted(pool[i] for i in rng.choice(len(pool), size=int(rng.integers(2, 5)), replace=False)))
            options = {}
            for g in groups:
                vals = spec["options"][g]
                k = int(rng.integers(min(3, len(vals)), min(6, len(vals)) + 1))
                picked = set(rng.choice(len(vals), size=k, replace=False).tolist())
                options[g] = tuple(vals[i] for i in sorted(picked))  # keep the list's natural order
            asin = "B0" + "".join(_ASIN_CHARS[rng.integers(len(_ASIN_CHARS), size=8)])
            if asin in seen_asins:
                continue
            seen_titles.add(title)
            seen_asins.add(asin)
            features = tuple(f"{a} design" for a in attrs)
            description = f"{brand} {kind} made with care, backed by a friendly return policy."
            nouns = frozenset(tokenize(" ".join((brand, mat, kind, aud))))
            price = round(float(rng.uniform(lo, hi)), 2)
            products.append(Product(
                asin=asin, title=title, price=price, category=category, query=kind,
                product_category=f"{category} › {sub} › {kind}", attributes=attrs, options=options,
                features=features, description=description, phrase=phrase, nouns=nouns,
                text=" ".join((title, *features, description)).lower()))
            made += 1
    return products


@functools.lru_cache(maxsize=4)
def get_catalog(seed: int = 0, per_category: int = 200) -> Catalog:
    """The catalogue for `seed` (independent of any task seed): 6 categories × `per_category`."""
    if not isinstance(seed, int) or not isinstance(per_category, int) or per_category < 10:
        raise ValueError(f"get_catalog: expected int seed and int per_category >= 10, got {seed!r}, {per_category!r}")
    return Catalog(_build_products(seed, per_category))
