"""UPMC Food-101 (Wang et al., ICME workshops 2015): recipe web pages, 101 classes, image + text.

Raw layout (the UPMC Food-101 release, also on Kaggle as "UPMC Food-101"):
    SRC/texts/train_titles.csv, SRC/texts/test_titles.csv
        no header; one row per image: image file name (apple_pie_0.jpg), the page text, the class
        (apple_pie). A header row, if present, is recognised and skipped.
    SRC/images/train/<class>/<image file>, SRC/images/test/<class>/<image file>
Classes: the 101 Food-101 categories in the order of Food-101's meta/classes.txt (CLASSES below).
Split: official train / test; no official val, so 10 % of train is carved out (stratified,
--val-fraction, --split-seed). Ids are ``<split>/<image file>``.
Defaults: image_size 224, text_model bert-base-uncased, max_len 128 (the page texts are long; 128
tokens keep the title and the first lines and is a common choice for this set -- raise it with
--max-len where memory allows).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ..errors import DataError
from .kinds import IMAGE_SUFFIXES
from .prepare import RawFormat, RawIndex, RawSample, register_raw
from .prepared_format import file_sha256

CLASSES = [
    "apple_pie",
    "baby_back_ribs",
    "baklava",
    "beef_carpaccio",
    "beef_tartare",
    "beet_salad",
    "beignets",
    "bibimbap",
    "bread_pudding",
    "breakfast_burrito",
    "bruschetta",
    "caesar_salad",
    "cannoli",
    "caprese_salad",
    "carrot_cake",
    "ceviche",
    "cheesecake",
    "cheese_plate",
    "chicken_curry",
    "chicken_quesadilla",
    "chicken_wings",
    "chocolate_cake",
    "chocolate_mousse",
    "churros",
    "clam_chowder",
    "club_sandwich",
    "crab_cakes",
    "creme_brulee",
    "croque_madame",
    "cup_cakes",
    "deviled_eggs",
    "donuts",
    "dumplings",
    "edamame",
    "eggs_benedict",
    "escargots",
    "falafel",
    "filet_mignon",
    "fish_and_chips",
    "foie_gras",
    "french_fries",
    "french_onion_soup",
    "french_toast",
    "fried_calamari",
    "fried_rice",
    "frozen_yogurt",
    "garlic_bread",
    "gnocchi",
    "greek_salad",
    "grilled_cheese_sandwich",
    "grilled_salmon",
    "guacamole",
    "gyoza",
    "hamburger",
    "hot_and_sour_soup",
    "hot_dog",
    "huevos_rancheros",
    "hummus",
    "ice_cream",
    "lasagna",
    "lobster_bisque",
    "lobster_roll_sandwich",
    "macaroni_and_cheese",
    "macarons",
    "miso_soup",
    "mussels",
    "nachos",
    "omelette",
    "onion_rings",
    "oysters",
    "pad_thai",
    "paella",
    "pancakes",
    "panna_cotta",
    "peking_duck",
    "pho",
    "pizza",
    "pork_chop",
    "poutine",
    "prime_rib",
    "pulled_pork_sandwich",
    "ramen",
    "ravioli",
    "red_velvet_cake",
    "risotto",
    "samosa",
    "sashimi",
    "scallops",
    "seaweed_salad",
    "shrimp_and_grits",
    "spaghetti_bolognese",
    "spaghetti_carbonara",
    "spring_rolls",
    "steak",
    "strawberry_shortcake",
    "sushi",
    "tacos",
    "takoyaki",
    "tiramisu",
    "tuna_tartare",
    "waffles",
]
assert len(CLASSES) == len(set(CLASSES)) == 101
CLASS_SET = frozenset(CLASSES)
FILES = (("train", "train_titles.csv"), ("test", "test_titles.csv"))


def read_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of each non-empty CSV record, with one-line errors naming the file."""
    previous = csv.field_size_limit(max(csv.field_size_limit(), 1 << 26))  # page texts exceed 128 kB
    rows = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for fields in reader:
                if any(cell.strip() for cell in fields):
                    rows.append((reader.line_num, fields))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV near line {reader.line_num} ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    finally:
        csv.field_size_limit(previous)  # the limit is process-wide: give it back
    return rows


@register_raw
class Food101(RawFormat):
    name = "food101"
    summary = "UPMC Food-101, 101 classes, image + text; modgap prepare food101, then --data food101:DIR"
    modalities = {"image": "image", "text": "text"}
    defaults = {"image": {"image_size": 224}, "text": {"text_model": "bert-base-uncased", "max_len": 128}}
    has_val = False

    def index(self, src: Path, options: dict[str, Any]) -> RawIndex:
        samples, problems, sources = [], [], {}
        seen: dict[str, int] = {}
        for split, filename in FILES:
            path = src / "texts" / filename
            rows = read_rows(path)
            sources[f"texts/{filename}"] = file_sha256(path)
            for k, (lineno, fields) in enumerate(rows):
                if len(fields) != 3:
                    raise DataError(
                        f"{path}: line {lineno} has {len(fields)} fields, expected 3 (image file, text, label)"
                    )
                image_name, text, label = fields[0].strip(), fields[1], fields[2].strip()
                if k == 0 and label not in CLASS_SET and not image_name.lower().endswith(IMAGE_SUFFIXES):
                    continue  # a header row
                sid = f"{split}/{image_name}"
                if sid in seen:
                    problems.append(
                        (sid, f"{path}: line {lineno}: image {image_name} already listed on line {seen[sid]}")
                    )
                    continue
                seen[sid] = lineno
                if label not in CLASS_SET:
                    problems.append(
                        (sid, f"{path}: line {lineno}: label '{label}' is not one of the 101 Food-101 classes")
                    )
                    continue
                # the file name alone (apple_pie_0.jpg) lives in images/<split>/<label>/; a path is taken as given
                relative = image_name if "/" in image_name else f"{label}/{image_name}"
                image = src / "images" / split / relative
                if not image_name or not image.is_file():
                    problems.append((sid, f"{image}: listed in {filename} line {lineno} but missing"))
                    continue
                samples.append(RawSample(sid, label, split, {"image": image, "text": text}))
        return RawIndex(list(CLASSES), samples, problems, sources)
