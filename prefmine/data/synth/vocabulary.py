"""The words of the synthetic catalogue: the category tree with its nouns, attributes and usage phrases, brand
name parts, and the review templates by sentiment.

Kept apart from the generator so the text a model sees can be read (and extended) in one place.
"""

from __future__ import annotations

import numpy as np

# Leaf category path, nouns, attributes, a usage phrase. Departments and mid levels come from the paths.
CATEGORY_TREE: tuple[tuple[str, tuple[str, ...], tuple[str, ...], str], ...] = (
    ("Home > Kitchen > Knives", ("chef knife", "paring knife", "knife block", "santoku knife", "bread knife",
                                 "steak knife set"), ("forged", "stainless", "razor-sharp", "ergonomic"),
     "for slicing and dicing"),
    ("Home > Kitchen > Cookware", ("skillet", "saucepan", "dutch oven", "wok", "stock pot"),
     ("nonstick", "cast iron", "induction-ready", "enameled"), "for everyday cooking"),
    ("Home > Kitchen > Small Appliances", ("blender", "toaster", "coffee maker", "air fryer", "electric kettle"),
     ("programmable", "compact", "high-speed", "quiet"), "on the kitchen counter"),
    ("Home > Bedding", ("duvet cover", "pillowcase", "sheet set", "comforter", "mattress topper"),
     ("cotton", "breathable", "hypoallergenic", "soft"), "for a good night's sleep"),
    ("Home > Furniture", ("bookshelf", "side table", "desk", "nightstand", "shoe rack"),
     ("solid wood", "modern", "rustic", "space-saving"), "in the living room"),
    ("Home > Lighting", ("desk lamp", "floor lamp", "LED bulb", "light string"),
     ("dimmable", "warm white", "energy-efficient", "bright"), "to light up the room"),
    ("Electronics > Audio > Headphones", ("headphone set", "earbud set", "gaming headset"),
     ("wireless", "noise-cancelling", "over-ear", "bluetooth"), "for music and calls"),
    ("Electronics > Audio > Speakers", ("speaker", "soundbar", "subwoofer", "smart speaker"),
     ("portable", "waterproof", "bass-heavy", "loud"), "for parties and movies"),
    ("Electronics > Computers > Laptops", ("laptop", "notebook", "chromebook", "ultrabook"),
     ("lightweight", "fast", "slim", "long-battery"), "for work and school"),
    ("Electronics > Computers > Accessories", ("keyboard", "mouse", "USB hub", "monitor stand", "webcam"),
     ("mechanical", "ergonomic", "plug-and-play", "wireless"), "at my desk"),
    ("Electronics > Phones > Cases", ("phone case", "screen protector", "wallet case"),
     ("shockproof", "slim", "tempered glass", "grippy"), "to protect my phone"),
    ("Electronics > Phones > Chargers", ("charger", "charging cable", "power bank", "wireless charger"),
     ("fast-charging", "braided", "USB-C", "compact"), "to keep my phone charged"),
    ("Electronics > Cameras", ("camera", "camera lens", "tripod", "memory card"),
     ("mirrorless", "zoom", "sharp", "stabilised"), "for travel photos"),
    ("Beauty > Skin Care", ("moisturizer", "face serum", "cleanser", "sunscreen", "face mask"),
     ("hydrating", "fragrance-free", "gentle", "non-greasy"), "in my skincare routine"),
    ("Beauty > Hair Care", ("shampoo", "conditioner", "hair oil", "hair dryer"),
     ("sulfate-free", "nourishing", "volumizing", "frizz-free"), "for my curly hair"),
    ("Beauty > Makeup", ("lipstick", "mascara", "foundation", "eyeliner"),
     ("long-lasting", "matte", "smudge-proof", "buildable"), "for everyday makeup"),
    ("Beauty > Fragrance", ("perfume", "cologne", "body mist"), ("floral", "woody", "fresh", "citrus"),
     "for date nights"),
    ("Sports > Fitness > Yoga", ("yoga mat", "yoga block", "resistance band", "foam roller"),
     ("non-slip", "thick", "eco-friendly", "cushioned"), "for my workouts"),
    ("Sports > Fitness > Weights", ("dumbbell set", "kettlebell", "barbell", "weight plate"),
     ("adjustable", "rubber-coated", "heavy-duty", "knurled"), "for home strength training"),
    ("Sports > Outdoors > Camping", ("tent", "sleeping bag", "camping stove", "lantern"),
     ("lightweight", "waterproof", "four-season", "packable"), "on camping trips"),
    ("Sports > Outdoors > Hiking", ("hiking boot", "daypack", "trekking pole", "water bottle"),
     ("durable", "breathable", "insulated", "rugged"), "on long hikes"),
    ("Sports > Cycling", ("bike helmet", "bike light", "bike lock", "bike saddle"),
     ("aerodynamic", "bright", "sturdy", "padded"), "on my commute"),
    ("Books > Fiction > Mystery", ("mystery novel", "thriller", "detective story"),
     ("gripping", "suspenseful", "twisty", "dark"), "on a rainy weekend"),
    ("Books > Fiction > Science Fiction", ("space opera", "sci-fi novel", "short story anthology"),
     ("imaginative", "epic", "thought-provoking", "futuristic"), "before bed"),
    ("Books > Nonfiction > Cooking", ("cookbook", "baking book", "recipe collection"),
     ("illustrated", "easy-to-follow", "vegetarian", "seasonal"), "for weeknight dinners"),
    ("Books > Nonfiction > History", ("biography", "history book", "memoir"),
     ("well-researched", "detailed", "readable", "balanced"), "for my book club"),
    ("Books > Children's Books", ("picture book", "bedtime story", "activity book"),
     ("colorful", "charming", "funny", "educational"), "with my kids"),
    ("Toys > Building Toys", ("building set", "construction kit", "magnetic tile set"),
     ("creative", "STEM", "colorful", "sturdy"), "for my son"),
    ("Toys > Board Games", ("board game", "card game", "jigsaw puzzle"),
     ("strategic", "family-friendly", "replayable", "fast-paced"), "on game night"),
    ("Toys > Action Figures", ("action figure", "doll", "playset"),
     ("poseable", "collectible", "detailed", "durable"), "for my daughter"),
    ("Clothing > Men > Shirts", ("dress shirt", "polo shirt", "t-shirt", "flannel shirt"),
     ("slim-fit", "cotton", "wrinkle-free", "soft"), "for the office"),
    ("Clothing > Women > Dresses", ("maxi dress", "sundress", "wrap dress", "cocktail dress"),
     ("flowy", "elegant", "stretchy", "lined"), "for summer weddings"),
    ("Clothing > Shoes > Running Shoes", ("running shoe", "trail runner", "sneaker"),
     ("cushioned", "lightweight", "supportive", "grippy"), "for my morning runs"),
    ("Clothing > Accessories > Watches", ("watch", "smartwatch", "watch band"),
     ("stainless", "water-resistant", "classic", "minimalist"), "every day"),
    ("Grocery > Coffee & Tea", ("coffee bean blend", "ground coffee", "green tea", "tea sampler"),
     ("organic", "bold", "smooth", "fair-trade"), "with breakfast"),
    ("Grocery > Snacks", ("granola bar", "trail mix", "potato chip bag", "cookie tin"),
     ("crunchy", "healthy", "sweet", "salty"), "as an afternoon snack"),
    ("Pet Supplies > Dogs", ("dog bed", "dog leash", "chew toy", "dog food"),
     ("durable", "orthopedic", "grain-free", "reflective"), "for my dog"),
    ("Pet Supplies > Cats", ("cat tree", "litter box", "cat toy", "scratching post"),
     ("sturdy", "odor-control", "interactive", "compact"), "for my cats"),
)

BRAND_HEADS = ("Nor", "Alt", "Bel", "Cor", "Dav", "Eko", "Fen", "Gal", "Hal", "Ivo", "Kal", "Lum", "Mar", "Nex",
                "Orb", "Pax", "Quin", "Rav", "Sol", "Tor", "Ul", "Vel", "Wex", "Zan")
BRAND_TAILS = ("vik", "ura", "ion", "ex", "ora", "ano", "eth", "ix", "ona", "ard")
BRANDS_PER_DEPT = 10
VARIANTS = ("", "", "", " Pro", " Plus", " Classic", " Deluxe", " Mini", " II", " Essentials")

# Review text by sentiment (0: ratings 1-2, 1: rating 3, 2: ratings 4-5).
WORDS = {
    0: ("flimsy", "disappointing", "poorly made", "cheap", "defective", "useless"),
    1: ("okay", "decent", "average", "fine", "acceptable"),
    2: ("excellent", "great", "fantastic", "sturdy", "perfect", "reliable", "well made"),
}
TITLES = {
    0: ("Disappointed with this {noun}", "Poor quality {noun}", "Not worth it", "Returned this {noun}",
        "Broke after a week", "Do not buy this {noun}"),
    1: ("Decent {noun}", "It's okay", "Average {noun} for the price", "Does the job, mostly",
        "Mixed feelings about this {noun}"),
    2: ("Love this {noun}", "Excellent {noun}", "Great {attr} {noun}", "Exactly what I needed",
        "Highly recommend this {noun}", "Best {noun} I have owned"),
}
OPENINGS = {
    0: ("I bought this {noun} {use} but it was {word}.", "This {noun} is {word} and not {attr} at all.",
        "Sadly the {noun} turned out {word}."),
    1: ("This {noun} is {word}; it works {use} but nothing special.", "I bought this {noun} {use} and it is {word}."),
    2: ("I bought this {noun} {use} and it is {word}.", "This {noun} is {word} and really {attr}.",
        "Really happy with this {noun}: {word} from day one."),
}
DETAILS = {
    0: ("The {attr} claim is misleading.", "Worst {dept} purchase I have made.",
        "It stopped working {use} within days."),
    1: ("The {attr} design is fine but could be better.", "Typical {dept} quality for the price."),
    2: ("The {attr} design feels {word}.", "Great value for a {dept} purchase.", "Works perfectly {use}."),
}
CLOSINGS = {
    0: ("I returned it.", "Would not recommend.", "Save your money."),
    1: ("Might buy again on sale.", "Three stars is fair."),
    2: ("Would buy again.", "Highly recommended.", "Makes a great gift too."),
}

# Derived: every noun in one list (item_noun indexes it), each category's slice of it, and departments.
NOUNS = [noun for _, nouns, _, _ in CATEGORY_TREE for noun in nouns]
NOUN_OFFSET = np.cumsum([0] + [len(nouns) for _, nouns, _, _ in CATEGORY_TREE])[:-1]
NOUN_COUNT = np.array([len(nouns) for _, nouns, _, _ in CATEGORY_TREE])
DEPTS = sorted({path.split(" > ")[0] for path, *_ in CATEGORY_TREE})
CAT_DEPT = np.array([DEPTS.index(path.split(" > ")[0]) for path, *_ in CATEGORY_TREE])
