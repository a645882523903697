"""A deterministic demo catalog: home-improvement products and shopper queries, from code alone.

`generate_demo` writes a complete XC-layout dataset (see DESIGN.md) so the service can be
trained and run without downloading anything. Products get titles built from a brand, a
product type, a key attribute (size, voltage, volume...), and optionally a material or finish,
a colour and a pack count. Queries are typed the way shoppers type: a few title words, brand +
type, type + attribute, synonyms, all lowercased and sometimes with typos (swapped, dropped or
doubled letters) or a truncated last word.

Relevance grades: the product a query came from has weight 3; a few products of the same type
and key attribute have weight 2 (positive, the threshold is 2.0); a few of the same type only
have weight 1 (listed but not positive). About 15% of products are "new": no training query
lists them, so the cold-start path (classifiers initialised from product text) is exercised.
The same seed always gives byte-identical files.

The same catalog is also written the way a shop exports its data (`write_shop_files`): a
products file with fields (title, brand, category, type, attributes), interaction logs with
counts per signal (a graded-3 pair as one purchase, 2 as one add-to-cart, 1 as one click) and
the `shopdata.toml` mapping that reads them (`training.shopdata`), which rebuilds exactly the
XC files above.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.bundle import write_lines
from training.dataset import Split, XCDataset
from training.shopdata.xc_export import write_xc_dir

DEMO_SEED = 0
DEMO_NAME = "demo"
GENERATOR = "training.demo.generate_demo"  # recorded in dataset.json
POSITIVE_MIN_WEIGHT = 2.0
PROPENSITY_A = 0.6
PROPENSITY_B = 2.6

SOURCE_WEIGHT = 3
SIBLING_WEIGHT = 2
SAME_TYPE_WEIGHT = 1
COLD_FRACTION = 0.15
TEST_FRACTION = 0.2
TYPO_RATE = 0.15
TRUNCATE_RATE = 0.1

BRANDS: tuple[str, ...] = (
    "Ridgeline", "Ironbark", "Stonecraft", "Bluewater", "Everbright", "Northpeak", "Copperfield",
    "Harborline", "Summit Pro", "Oakhurst", "Truecraft", "Granite Bay", "Maplewood", "Redstone",
    "Silverleaf", "Pinecrest", "Duraforge", "Brightwell", "Cedar Lane", "Westbrook", "Tidewater",
    "Keystone", "Blackhawk", "Lakeshore", "Fairhaven", "Highmark", "Evergreen", "Arrowhead",
    "Sterling Works", "Coastline", "Ember", "Prairie", "Timberline", "Hollis", "Vantage",
    "Bellwether", "Crestview", "Foxglove", "Ashford", "Quarry",
)  # fmt: skip

_BASIC_COLOURS = ("White", "Black", "Gray", "Red", "Blue", "Green", "Yellow", "Orange")
_METAL_FINISHES = ("Chrome", "Brushed Nickel", "Matte Black", "Oil-Rubbed Bronze", "Stainless")
_WALL_COLOURS = ("White", "Ultra Pure White", "Swiss Coffee", "Gray", "Navy", "Sage", "Beige")
_WOOD_TONES = ("Natural Oak", "Hickory", "Gray Ash", "Walnut", "Espresso", "Weathered Pine")
_PAINT_FINISHES = ("Flat", "Eggshell", "Satin", "Semi-Gloss")
_APPLIANCE_FINISHES = ("Stainless Steel", "Black Stainless", "White", "Slate")


@dataclass(kw_only=True, frozen=True)
class ProductType:
    """A product type: its department, title text, query synonyms and attribute choices."""

    department: str
    name: str
    synonyms: tuple[str, ...]
    attributes: tuple[str, ...]
    materials: tuple[str, ...] = ()
    colours: tuple[str, ...] = ()
    packs: tuple[int, ...] = ()


def _t(
    department: str,
    name: str,
    synonyms: tuple[str, ...],
    attributes: tuple[str, ...],
    materials: tuple[str, ...] = (),
    colours: tuple[str, ...] = (),
    packs: tuple[int, ...] = (),
) -> ProductType:
    """Shorthand constructor that keeps the table below compact."""
    return ProductType(
        department=department,
        name=name,
        synonyms=synonyms,
        attributes=attributes,
        materials=materials,
        colours=colours,
        packs=packs,
    )


_VOLTS = ("12-Volt", "18-Volt", "20-Volt", "24-Volt", "40-Volt")
_GAS_OR_VOLT = ("40-Volt", "20-Volt", "25cc Gas", "80-Volt")

PRODUCT_TYPES: tuple[ProductType, ...] = (
    # tools
    _t("tools", "Cordless Drill Driver Kit", ("cordless drill", "drill driver", "power drill"),
       _VOLTS, colours=("Yellow", "Red", "Blue", "Green")),
    _t("tools", "Impact Driver", ("impact drill", "impact gun"), _VOLTS,
       colours=("Yellow", "Red", "Blue")),
    _t("tools", "Circular Saw", ("circ saw", "skil saw"),
       ("6-1/2 in. 20-Volt", "7-1/4 in. 15-Amp", "7-1/4 in. 13-Amp")),
    _t("tools", "Reciprocating Saw", ("sawzall", "recip saw"), ("20-Volt", "12-Amp", "18-Volt")),
    _t("tools", "Orbital Sander", ("palm sander", "random orbit sander"),
       ("5 in.", "6 in.", "1/4 Sheet")),
    _t("tools", "Claw Hammer", ("hammer", "framing hammer"), ("16 oz.", "20 oz.", "22 oz."),
       materials=("Steel", "Fiberglass", "Hickory Handle")),
    _t("tools", "Tape Measure", ("measuring tape",), ("16 ft.", "25 ft.", "35 ft."),
       colours=("Yellow", "Black", "Orange")),
    _t("tools", "Screwdriver Set", ("screw driver set", "screwdrivers"),
       ("6-Piece", "10-Piece", "14-Piece")),
    _t("tools", "Socket Set", ("ratchet set", "socket wrench set"),
       ("1/4 in. Drive 40-Piece", "3/8 in. Drive 72-Piece", "1/2 in. Drive 21-Piece")),
    _t("tools", "Wet/Dry Vacuum", ("shop vac", "shop vacuum"), ("5 gal.", "9 gal.", "16 gal.")),
    _t("tools", "Tool Box", ("toolbox", "tool chest"), ("19 in.", "22 in.", "26 in."),
       materials=("Plastic", "Steel", "Aluminum"), colours=("Black", "Red", "Gray")),
    _t("tools", "Utility Knife", ("box cutter", "razor knife"),
       ("Folding", "Retractable", "Fixed Blade"), packs=(2, 3)),
    # paint
    _t("paint", "Interior Paint", ("wall paint", "paint"), ("1 gal.", "5 gal.", "1 qt."),
       materials=_PAINT_FINISHES, colours=_WALL_COLOURS),
    _t("paint", "Exterior Paint", ("outdoor paint", "house paint"), ("1 gal.", "5 gal."),
       materials=_PAINT_FINISHES, colours=_WALL_COLOURS),
    _t("paint", "Paint Primer", ("primer", "undercoat"), ("1 gal.", "5 gal.", "1 qt."),
       colours=("White", "Gray")),
    _t("paint", "Spray Paint", ("aerosol paint", "rattle can"), ("12 oz.", "11 oz."),
       materials=("Gloss", "Matte", "Satin", "Hammered"), colours=_BASIC_COLOURS, packs=(6,)),
    _t("paint", "Paint Roller Cover", ("roller cover", "paint roller"),
       ("9 in. x 3/8 in.", "9 in. x 1/2 in.", "4 in. x 3/8 in."),
       materials=("Microfiber", "Woven", "Polyester"), packs=(3, 6)),
    _t("paint", "Paint Brush", ("paintbrush", "brush"), ("2 in.", "2-1/2 in.", "3 in."),
       materials=("Nylon", "Polyester", "Natural Bristle"), packs=(3,)),
    _t("paint", "Painter's Tape", ("masking tape", "blue tape"),
       ("1.88 in. x 60 yds.", "0.94 in. x 60 yds.", "1.41 in. x 60 yds."), packs=(2, 3, 6)),
    _t("paint", "Wood Stain", ("deck stain", "stain"), ("1 qt.", "1 gal."),
       materials=("Oil-Based", "Water-Based"), colours=_WOOD_TONES),
    _t("paint", "Drop Cloth", ("tarp", "painting tarp"), ("9 ft. x 12 ft.", "4 ft. x 15 ft."),
       materials=("Canvas", "Plastic")),
    # plumbing
    _t("plumbing", "PEX Pipe", ("pex tubing", "water line"),
       ("1/2 in. x 100 ft.", "3/4 in. x 100 ft.", "1/2 in. x 10 ft."),
       colours=("Red", "Blue", "White")),
    _t("plumbing", "PVC Pipe", ("pvc", "plastic pipe"),
       ("1/2 in. x 10 ft.", "3/4 in. x 10 ft.", "2 in. x 10 ft.")),
    _t("plumbing", "90-Degree Elbow Fitting", ("elbow", "pipe elbow"), ("1/2 in.", "3/4 in."),
       materials=("Copper", "Brass", "PVC"), packs=(5, 10)),
    _t("plumbing", "Ball Valve", ("shut off valve", "shutoff valve"),
       ("1/2 in.", "3/4 in.", "1 in."), materials=("Brass", "Stainless Steel")),
    _t("plumbing", "Kitchen Faucet", ("sink faucet", "pull down faucet"),
       ("Single-Handle Pull-Down", "Two-Handle", "Touchless Pull-Down"), colours=_METAL_FINISHES),
    _t("plumbing", "Bathroom Faucet", ("lavatory faucet", "vanity faucet"),
       ("4 in. Centerset", "8 in. Widespread", "Single Hole"), colours=_METAL_FINISHES),
    _t("plumbing", "Toilet", ("commode",),
       ("2-Piece 1.28 GPF", "1-Piece 1.1 GPF", "2-Piece 1.6 GPF"),
       colours=("White", "Biscuit", "Bone")),
    _t("plumbing", "Water Heater", ("hot water heater", "water tank"),
       ("40 gal.", "50 gal.", "30 gal."), materials=("Gas", "Electric")),
    _t("plumbing", "Garbage Disposal", ("disposal", "food waste disposer"),
       ("1/2 HP", "3/4 HP", "1/3 HP")),
    _t("plumbing", "Shower Head", ("showerhead", "rain shower"),
       ("5-Spray", "1-Spray 8 in.", "3-Spray"),
       colours=_METAL_FINISHES),
    _t("plumbing", "Sump Pump", ("basement pump", "submersible pump"), ("1/3 HP", "1/2 HP"),
       materials=("Cast Iron", "Thermoplastic")),
    # electrical
    _t("electrical", "LED Light Bulb", ("led bulb", "light bulb"),
       ("60-Watt Equivalent A19", "100-Watt Equivalent A21", "40-Watt Equivalent B11"),
       colours=("Soft White", "Daylight", "Bright White"), packs=(2, 4, 8, 12)),
    _t("electrical", "Extension Cord", ("power cord", "cord"),
       ("25 ft. 16/3", "50 ft. 12/3", "100 ft. 14/3"), colours=("Orange", "Green", "Black")),
    _t("electrical", "Surge Protector Power Strip", ("surge protector", "power strip"),
       ("6-Outlet", "8-Outlet", "12-Outlet"), colours=("White", "Black")),
    _t("electrical", "Light Switch", ("toggle switch", "switch"),
       ("15 Amp Single-Pole", "15 Amp 3-Way", "Decorator 15 Amp"),
       colours=("White", "Ivory", "Light Almond", "Black"), packs=(10,)),
    _t("electrical", "Electrical Outlet", ("outlet", "receptacle"),
       ("15 Amp Duplex", "20 Amp Tamper Resistant", "20 Amp GFCI"), colours=("White", "Ivory"),
       packs=(10,)),
    _t("electrical", "Electrical Wire", ("romex", "wire"),
       ("12/2 x 250 ft.", "14/2 x 50 ft.", "10/3 x 100 ft."), materials=("Copper", "Solid Copper")),
    _t("electrical", "Circuit Breaker", ("breaker",),
       ("15 Amp Single-Pole", "20 Amp Single-Pole", "30 Amp Double-Pole")),
    _t("electrical", "Ceiling Fan", ("fan", "ceiling fan with light"),
       ("44 in.", "52 in.", "60 in."),
       colours=_METAL_FINISHES),
    _t("electrical", "Flush Mount Light", ("ceiling light", "flush mount"),
       ("11 in.", "13 in.", "16 in."),
       colours=_METAL_FINISHES),
    _t("electrical", "Motion Sensor Flood Light", ("security light", "flood light"),
       ("2-Head", "3-Head"), colours=("Bronze", "White", "Black")),
    # garden
    _t("garden", "Garden Hose", ("hose", "water hose"),
       ("5/8 in. x 50 ft.", "5/8 in. x 100 ft.", "1/2 in. x 25 ft."),
       materials=("Rubber", "Vinyl", "Expandable"), colours=("Green", "Black", "Blue")),
    _t("garden", "Lawn Mower", ("mower", "push mower"),
       ("21 in. Gas Self-Propelled", "20 in. 40-Volt Cordless", "21 in. Gas Push")),
    _t("garden", "String Trimmer", ("weed eater", "weed wacker", "weed trimmer"), _GAS_OR_VOLT),
    _t("garden", "Leaf Blower", ("blower", "yard blower"), _GAS_OR_VOLT),
    _t("garden", "Potting Soil", ("potting mix", "soil"), ("1 cu. ft.", "2 cu. ft.", "8 qt."),
       packs=(2, 4)),
    _t("garden", "Mulch", ("bark mulch", "wood mulch"), ("2 cu. ft.", "1.5 cu. ft."),
       colours=("Red", "Brown", "Black")),
    _t("garden", "Planter", ("flower pot", "pot"), ("12 in.", "16 in.", "20 in."),
       materials=("Resin", "Ceramic", "Terracotta"), colours=("White", "Charcoal", "Terracotta")),
    _t("garden", "Wheelbarrow", ("wheel barrow", "yard cart"), ("6 cu. ft.", "8 cu. ft."),
       materials=("Steel", "Poly")),
    _t("garden", "Pruning Shears", ("pruners", "hand pruner", "garden shears"),
       ("Bypass", "Anvil", "Ratchet")),
    _t("garden", "Grass Seed", ("lawn seed", "seed"), ("3 lb.", "7 lb.", "20 lb.")),
    _t("garden", "Lawn Sprinkler", ("sprinkler", "yard sprinkler"),
       ("Oscillating", "Impact", "Rotary")),
    # kitchen
    _t("kitchen", "Kitchen Sink", ("sink", "undermount sink"),
       ("33 in. Double Bowl", "30 in. Single Bowl", "25 in. Drop-In"),
       materials=("Stainless Steel", "Granite Composite", "Fireclay")),
    _t("kitchen", "Cabinet Pull", ("drawer pull", "cabinet handle"),
       ("3 in.", "3-3/4 in.", "5-1/16 in."), colours=_METAL_FINISHES, packs=(10, 25)),
    _t("kitchen", "Range Hood", ("vent hood", "stove hood"), ("30 in.", "36 in."),
       materials=("Under Cabinet", "Wall Mount"), colours=_APPLIANCE_FINISHES),
    _t("kitchen", "Refrigerator", ("fridge",),
       ("25 cu. ft. French Door", "18 cu. ft. Top Freezer", "22 cu. ft. Side by Side"),
       colours=_APPLIANCE_FINISHES),
    _t("kitchen", "Microwave", ("over the range microwave", "countertop microwave"),
       ("1.6 cu. ft. Over the Range", "1.1 cu. ft. Countertop"), colours=_APPLIANCE_FINISHES),
    _t("kitchen", "Dishwasher", ("dish washer",),
       ("24 in. Front Control", "24 in. Top Control", "18 in."),
       colours=_APPLIANCE_FINISHES),
    # bath
    _t("bath", "Bathroom Vanity", ("vanity", "bath vanity"),
       ("24 in.", "30 in.", "36 in.", "48 in."),
       colours=("White", "Gray", "Espresso", "Navy")),
    _t("bath", "Towel Bar", ("towel rack", "towel rod"),
       ("18 in.", "24 in."), colours=_METAL_FINISHES),
    _t("bath", "Bath Exhaust Fan", ("bathroom fan", "vent fan"), ("50 CFM", "80 CFM", "110 CFM")),
    _t("bath", "Shower Curtain Rod", ("curtain rod", "shower rod"), ("72 in.", "Curved 60 in."),
       colours=_METAL_FINISHES),
    _t("bath", "Medicine Cabinet", ("mirror cabinet",), ("20 in. x 26 in.", "15 in. x 26 in."),
       materials=("Recessed", "Surface-Mount")),
    # flooring
    _t("flooring", "Vinyl Plank Flooring", ("luxury vinyl plank", "vinyl floor", "lvp"),
       ("7 in. x 48 in.", "6 in. x 36 in."), colours=_WOOD_TONES),
    _t("flooring", "Laminate Flooring", ("laminate", "laminate floor"), ("8 mm", "10 mm", "12 mm"),
       colours=_WOOD_TONES),
    _t("flooring", "Ceramic Tile", ("floor tile", "tile"),
       ("12 in. x 12 in.", "12 in. x 24 in.", "3 in. x 6 in."),
       colours=("White", "Gray", "Beige", "Black")),
    _t("flooring", "Carpet Tile", ("carpet squares", "carpet"),
       ("24 in. x 24 in.", "19.7 in. x 19.7 in."),
       colours=("Gray", "Beige", "Blue"), packs=(10, 15)),
    _t("flooring", "Tile Grout", ("grout",), ("10 lb.", "25 lb."), materials=("Sanded", "Unsanded"),
       colours=("White", "Gray", "Charcoal")),
    # hardware
    _t("hardware", "Wood Screws", ("screws", "deck screws"),
       ("#8 x 1-1/4 in.", "#8 x 2-1/2 in.", "#10 x 3 in."),
       materials=("Zinc-Plated", "Stainless Steel", "Coated"), packs=(100, 250)),
    _t("hardware", "Door Hinge", ("hinge", "hinges"),
       ("3-1/2 in.", "4 in."), colours=_METAL_FINISHES,
       packs=(3, 6)),
    _t("hardware", "Deadbolt", ("dead bolt", "door lock"),
       ("Single Cylinder", "Double Cylinder", "Keyless Electronic"), colours=_METAL_FINISHES),
    _t("hardware", "Door Knob", ("doorknob", "door handle"), ("Passage", "Privacy", "Entry"),
       colours=_METAL_FINISHES),
    _t("hardware", "Drywall Anchors", ("wall anchors", "anchors"), ("#6", "#8", "50 lb."),
       materials=("Plastic", "Zinc"), packs=(25, 100)),
    _t("hardware", "Padlock", ("lock", "pad lock"),
       ("1-1/2 in.", "2 in."), materials=("Brass", "Steel"),
       packs=(2, 4)),
    # storage
    _t("storage", "Shelving Unit", ("shelves", "storage rack", "shelf"),
       ("3-Tier 24 in. W", "4-Tier 48 in. W", "5-Tier 36 in. W"),
       materials=("Steel", "Resin", "Wire"), colours=("Black", "Gray", "Chrome")),
    _t("storage", "Storage Tote", ("storage bin", "tote"), ("12 gal.", "18 gal.", "27 gal."),
       colours=("Black", "Clear", "Gray"), packs=(4, 6)),
    # heating and cooling
    _t("heating", "Window Air Conditioner", ("window ac", "ac unit", "air conditioner"),
       ("6,000 BTU", "8,000 BTU", "10,000 BTU")),
    _t("heating", "Space Heater", ("electric heater", "heater"), ("750-Watt", "1500-Watt"),
       materials=("Ceramic", "Oil-Filled", "Infrared")),
    _t("heating", "Furnace Air Filter", ("air filter", "hvac filter"),
       ("16 in. x 25 in. x 1 in.", "20 in. x 20 in. x 1 in.", "14 in. x 20 in. x 1 in."),
       materials=("MERV 8", "MERV 11", "MERV 13"), packs=(4, 6, 12)),
    _t("heating", "Programmable Thermostat", ("thermostat", "smart thermostat"),
       ("7-Day", "5-2 Day", "Wi-Fi")),
    _t("heating", "Dehumidifier", ("humidity remover",), ("35 pt.", "50 pt.")),
    # building materials
    _t("building", "Pressure-Treated Lumber", ("lumber", "treated wood"),
       ("2 in. x 4 in. x 8 ft.", "2 in. x 6 in. x 10 ft.", "4 in. x 4 in. x 8 ft.")),
    _t("building", "Drywall Sheet", ("sheetrock", "drywall", "gypsum board"),
       ("1/2 in. x 4 ft. x 8 ft.", "5/8 in. x 4 ft. x 8 ft.")),
    _t("building", "Plywood Sheathing", ("plywood", "osb"),
       ("23/32 in. x 4 ft. x 8 ft.", "15/32 in. x 4 ft. x 8 ft.")),
    _t("building", "Concrete Mix", ("concrete", "cement"), ("50 lb.", "60 lb.", "80 lb."),
       materials=("Fast-Setting", "High-Strength")),
    _t("building", "Silicone Caulk", ("caulk", "sealant"), ("10.1 oz.", "5.5 oz."),
       colours=("White", "Clear", "Almond"), packs=(2, 12)),
    _t("building", "Construction Adhesive", ("liquid nails", "glue"), ("10 oz.", "28 oz.")),
)  # fmt: skip


@dataclass(kw_only=True, frozen=True)
class _Product:
    type_index: int
    brand: str
    attribute: str
    material: str
    colour: str
    pack: int
    title: str


def _make_title(
    ptype: ProductType, brand: str, attr: str, material: str, colour: str, pack: int
) -> str:
    """Title in catalog style, e.g. 'Ridgeline 20-Volt Cordless Drill Kit in Yellow (2-Pack)'."""
    words = [brand, attr, material, ptype.name]
    title = " ".join(w for w in words if w)
    if colour:
        title += f" in {colour}"
    if pack:
        title += f" ({pack}-Pack)"
    return title


def _make_products(rng: random.Random, num_products: int) -> list[_Product]:
    """Draw `num_products` products with unique titles."""
    products: list[_Product] = []
    seen: set[str] = set()
    attempts = 0
    while len(products) < num_products:
        attempts += 1
        if attempts > 100 * num_products + 1000:
            raise ValueError(f"cannot make {num_products} distinct product titles")
        type_index = rng.randrange(len(PRODUCT_TYPES))
        ptype = PRODUCT_TYPES[type_index]
        for _ in range(20):
            brand = rng.choice(BRANDS)
            attr = rng.choice(ptype.attributes)
            material = rng.choice(ptype.materials) if ptype.materials and rng.random() < 0.7 else ""
            colour = rng.choice(ptype.colours) if ptype.colours and rng.random() < 0.7 else ""
            pack = rng.choice(ptype.packs) if ptype.packs and rng.random() < 0.35 else 0
            title = _make_title(ptype, brand, attr, material, colour, pack)
            if title not in seen:
                seen.add(title)
                products.append(
                    _Product(
                        type_index=type_index,
                        brand=brand,
                        attribute=attr,
                        material=material,
                        colour=colour,
                        pack=pack,
                        title=title,
                    )
                )
                break
    return products


def _shopper_text(text: str) -> str:
    """Lowercase, dropping punctuation shoppers skip: '1/2 in. (2-Pack)' -> '1/2 in 2-pack'."""
    out = []
    for raw in text.lower().replace("(", " ").replace(")", " ").replace(",", "").split():
        word = raw.rstrip(".")
        if word:
            out.append(word)
    return " ".join(out)


def _typo(rng: random.Random, word: str) -> str:
    """One keyboard slip in `word`: two adjacent letters swapped, a letter dropped or doubled."""
    kind = rng.randrange(3)
    i = rng.randrange(1, len(word) - 1)
    if kind == 0 and word[i] != word[i + 1]:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]


def _add_noise(rng: random.Random, query: str) -> str:
    """Sometimes add a typo to one word and sometimes cut the last word short (still typing)."""
    words = query.split()
    if rng.random() < TYPO_RATE:
        candidates = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
        if candidates:
            i = rng.choice(candidates)
            words[i] = _typo(rng, words[i])
    if (
        len(words) >= 2
        and rng.random() < TRUNCATE_RATE
        and len(words[-1]) >= 5
        and words[-1].isalpha()
    ):
        words[-1] = words[-1][: rng.randrange(3, len(words[-1]))]
    return " ".join(words)


def _short_type(ptype: ProductType, rng: random.Random) -> str:
    """The product type as typed: the full name or its last one or two words."""
    words = ptype.name.split()
    if len(words) == 1 or rng.random() < 0.5:
        return ptype.name
    return " ".join(words[-rng.randint(1, min(2, len(words) - 1)) :])


def _make_query(rng: random.Random, product: _Product) -> str:
    """One shopper query for `product` (lowercased, possibly misspelled or truncated)."""
    ptype = PRODUCT_TYPES[product.type_index]
    style = rng.choices(("words", "brand", "attr", "synonym", "detail"), (3, 2, 3, 2, 1))[0]
    if style == "words":
        words = _shopper_text(product.title).split()
        words = [w for w in words if w != "in"]
        count = min(len(words), rng.randint(2, 4))
        picks = sorted(rng.sample(range(len(words)), count))
        text = " ".join(words[i] for i in picks)
    elif style == "brand":
        text = f"{product.brand} {_short_type(ptype, rng)}"
    elif style == "attr":
        parts = [_short_type(ptype, rng), product.attribute]
        if rng.random() < 0.5:
            parts.reverse()
        text = " ".join(parts)
    elif style == "synonym":
        parts = [rng.choice(ptype.synonyms)]
        if rng.random() < 0.6:
            parts.append(product.attribute)
        if product.colour and rng.random() < 0.3:
            parts.append(product.colour)
        text = " ".join(parts)
    else:
        detail = product.colour or product.material or product.attribute
        text = f"{detail} {_short_type(ptype, rng)}"
    return _add_noise(rng, _shopper_text(text))


def _labels_for(
    rng: random.Random,
    source: int,
    products: list[_Product],
    by_type: dict[int, list[int]],
    excluded: set[int],
) -> dict[int, int]:
    """Relevance grades of one query: its product 3, same type+attribute 2, same type only 1."""
    product = products[source]
    same_type = [j for j in by_type[product.type_index] if j != source and j not in excluded]
    close = [j for j in same_type if products[j].attribute == product.attribute]
    loose = [j for j in same_type if products[j].attribute != product.attribute]
    labels = {source: SOURCE_WEIGHT}
    for j in rng.sample(close, min(len(close), rng.randint(0, 3))):
        labels[j] = SIBLING_WEIGHT
    for j in rng.sample(loose, min(len(loose), rng.randint(0, 2))):
        labels[j] = SAME_TYPE_WEIGHT
    return labels


def _split(queries: list[str], rows: list[dict[int, int]]) -> Split:
    """Graded queries as a `Split`: each point's labels sorted, its grades as weights."""
    labels = [np.array(sorted(row), np.int64) for row in rows]
    weights = [np.array([row[j] for j in sorted(row)], np.float32) for row in rows]
    return Split(texts=list(queries), labels=labels, weights=weights)


# A graded pair as the one interaction that earns its grade under `SHOP_SIGNALS`.
SIGNAL_OF_GRADE = {
    SOURCE_WEIGHT: "purchases",
    SIBLING_WEIGHT: "add_to_carts",
    SAME_TYPE_WEIGHT: "clicks",
}
SHOP_SIGNALS = {"purchases": 3, "add_to_carts": 2, "clicks": 1}
SHOP_CONFIG = "shopdata.toml"


def _attributes(product: _Product) -> str:
    """A product's attributes as a shop export writes them: "size: 20-Volt; colour: Yellow"."""
    pairs = [
        ("size", product.attribute),
        ("material", product.material),
        ("colour", product.colour),
        ("pack", str(product.pack) if product.pack else ""),
    ]
    return "; ".join(f"{key}: {value}" for key, value in pairs if value)


def _write_interactions(path: Path, queries: list[str], rows: list[dict[int, int]]) -> None:
    """One row per graded (query, product) pair: the one signal that earns its grade."""
    signals = list(SHOP_SIGNALS)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["query", "product_id", *signals])
        for query, row in zip(queries, rows, strict=True):
            for j, grade in sorted(row.items()):
                counts = [int(SIGNAL_OF_GRADE[grade] == signal) for signal in signals]
                writer.writerow([query, f"D{100001 + j}", *counts])


def write_shop_files(
    out: Path,
    products: list[_Product],
    trn: tuple[list[str], list[dict[int, int]]],
    tst: tuple[list[str], list[dict[int, int]]],
) -> None:
    """The demo as a shop's exports: products.csv, interactions.csv, test_interactions.csv and
    the mapping that reads them (`shopdata.toml`)."""
    with (out / "products.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "title", "brand", "category", "type", "attributes"])
        for j, p in enumerate(products):
            ptype = PRODUCT_TYPES[p.type_index]
            row = [f"D{100001 + j}", p.title, p.brand, ptype.department, ptype.name]
            writer.writerow([*row, _attributes(p)])
    _write_interactions(out / "interactions.csv", *trn)
    _write_interactions(out / "test_interactions.csv", *tst)
    config = [
        '# The demo catalog as a shop exports it (training.shopdata; README, "Your own data").',
        f'name = "{DEMO_NAME}"',
        'products = "products.csv"',
        'interactions = "interactions.csv"',
        'test_interactions = "test_interactions.csv"',
        'id_column = "id"',
        'title_column = "title"',
        'text_fields = ["title"]',
        'query_column = "query"',
        'product_column = "product_id"',
        f"positive_min_weight = {POSITIVE_MIN_WEIGHT}",
        f"max_grade = {float(SOURCE_WEIGHT)}",
        "",
        "[signals]",
        *[f"{name} = {float(weight)}" for name, weight in SHOP_SIGNALS.items()],
    ]
    write_lines(out / SHOP_CONFIG, config)


def generate_demo(out_dir: str | Path, num_products: int = 2000, seed: int = DEMO_SEED) -> Path:
    """Write the demo dataset (XC layout) into `out_dir` and return its path.

    Deterministic: only `random.Random(seed)` and the word lists above are used, so the same
    arguments give byte-identical files. About 3 queries per product, split ~80/20 into
    trn/tst by query; ~15% of products never appear in trn (cold start).
    """
    if num_products < 1:
        raise ValueError(f"num_products must be >= 1, got {num_products}")
    rng = random.Random(seed)
    products = _make_products(rng, num_products)
    by_type: dict[int, list[int]] = {}
    for j, product in enumerate(products):
        by_type.setdefault(product.type_index, []).append(j)

    num_cold = round(COLD_FRACTION * num_products) if num_products > 1 else 0
    cold = sorted(rng.sample(range(num_products), num_cold))
    cold_set = set(cold)

    # Generate queries: warm products 1-5 (first one always trn), cold products 1-2 (all tst).
    queries: dict[str, int] = {}
    forced_trn: list[str] = []
    free: list[str] = []
    for j in range(num_products):
        count = rng.choice((1, 2, 2)) if j in cold_set else rng.choice((1, 2, 3, 3, 4, 4, 5))
        made = 0
        for _ in range(4 * count):
            if made == count:
                break
            text = _make_query(rng, products[j])
            if not text or text in queries:
                continue
            queries[text] = j
            made += 1
            if j in cold_set:
                continue
            (forced_trn if made == 1 else free).append(text)

    # Split by query: cold queries are all tst; top up tst from the free warm queries.
    cold_queries = [q for q, j in queries.items() if j in cold_set]
    num_tst = max(len(cold_queries), round(TEST_FRACTION * len(queries)))
    extra_tst = rng.sample(free, min(len(free), num_tst - len(cold_queries)))
    extra_set = set(extra_tst)
    trn_queries = forced_trn + [q for q in free if q not in extra_set]
    tst_queries = cold_queries + extra_tst
    rng.shuffle(trn_queries)
    rng.shuffle(tst_queries)

    trn_rows = [_labels_for(rng, queries[q], products, by_type, cold_set) for q in trn_queries]
    tst_rows = [_labels_for(rng, queries[q], products, by_type, set()) for q in tst_queries]

    dataset = XCDataset(
        name=DEMO_NAME,
        label_titles=[p.title for p in products],
        label_ids=[f"D{100001 + j}" for j in range(num_products)],
        trn=_split(trn_queries, trn_rows),
        tst=_split(tst_queries, tst_rows),
        positive_min_weight=POSITIVE_MIN_WEIGHT,
        graded=True,
        propensity_a=PROPENSITY_A,
        propensity_b=PROPENSITY_B,
    )
    out = write_xc_dir(dataset, Path(out_dir), {"seed": seed, "generator": GENERATOR})
    write_shop_files(out, products, (trn_queries, trn_rows), (tst_queries, tst_rows))
    return out
