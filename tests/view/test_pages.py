"""Every page of the view on the small run, through FastAPI's TestClient: what each shows,
checked against the library's own tables."""

import html
import io
import re

import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient
from markupsafe import escape

from inversescope.view import create_app
from inversescope.view.rows import visible


def shown(text: str) -> str:
    """A text as a page holds it: control characters pictured, then HTML-escaped."""
    return str(escape(visible(text)))


def cells(page: str) -> dict[str, str]:
    """The heat-map cells of a page: site -> hover text (the first map's, per site)."""
    out = {}
    for site, tip in re.findall(
        r'<g class="cell" data-site="([^"]+)"><title>([^<]*)</title>', page
    ):
        out.setdefault(site, html.unescape(tip))
    return out


def test_runs_page_lists_each_complete_run(client, view_run):
    _, run = view_run
    r = client.get("/")
    assert r.status_code == 200
    assert f'href="/run/{run.key}"' in r.text
    for word in ("ioi-tiny", "inversescope", "mean refusal", "worst refusal"):
        assert word in r.text
    assert 'action="/compare"' in r.text and 'name="run"' in r.text
    assert "server-timing" in r.headers


def test_overview_maps_every_site_and_feature(client, view_run):
    _, run = view_run
    page = client.get(f"/run/{run.key}").text
    results = run.results()
    assert page.count('class="heatmap"') == len(run.features) + 1  # one per feature + refusal
    tips = cells(page)
    assert set(tips) == set(run.sites)
    first = sorted(run.features)[0]
    for row in results.filter(pl.col("feature") == first).iter_rows(named=True):
        tip = tips[row["site"]]
        assert f"chance {row['chance']:.3f}" in tip and f"n = {row['n_examples']} examples" in tip
    for site in run.sites:
        assert f'href="/run/{run.key}/site/{site}"' in page


def test_the_results_table_sorts_and_downloads_as_csv(client, view_run):
    _, run = view_run
    results = run.results()
    r = client.get(f"/run/{run.key}/results.csv", params={"sort": "chance", "desc": 0})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    csv = pl.read_csv(io.StringIO(r.text))
    assert csv.height == results.height
    assert csv["chance"].to_list() == sorted(results["chance"].to_list())
    one = pl.read_csv(io.StringIO(client.get(f"/run/{run.key}/results.csv?feature=place").text))
    assert set(one["feature"]) == {"place"} and one.height == len(run.sites)
    page = client.get(f"/run/{run.key}", params={"sort": "refusal_rate", "desc": 1}).text
    assert "refusal_rate ▼" in page


def test_site_page_shows_each_reference_and_its_samples(client, view_run):
    _, run = view_run
    page = client.get(f"/run/{run.key}/site/L0H1").text
    refs = run.references()
    for example in range(run.config.sample.n_examples):
        text = refs.filter(pl.col("id") == example)["text"][0]
        assert shown(text.rsplit(" ", 1)[0]) in page  # the text before the read token
        for s in run.samples("L0H1", example).iter_rows(named=True):
            if s["text"]:
                assert shown(s["text"]) in page
    assert '<mark class="read"' in page
    assert 'class="eps-line"' in page and f"ε = {run.epsilon:g}" in page
    refusal = results_refusal(run, "L0H1")
    assert f"{100 * refusal:.1f} %" in page


def results_refusal(run, site):
    return run.results().filter(pl.col("site") == site)["refusal_rate"][0]


def test_site_page_histogram_counts_every_sample_and_matches_the_refusal_rate(client, view_run):
    """The histogram, recomputed from its bars, against the fcr stage's refusal rate."""
    _, run = view_run
    page = client.get(f"/run/{run.key}/site/L1.attn").text
    bars = re.findall(
        r'<rect class="bar (accepted|refused)"[^>]*><title>[^:]*: (\d+) samples', page
    )
    d = run.samples("L1.attn")["distance"].to_numpy()
    assert sum(int(n) for _, n in bars) == np.count_nonzero(~np.isnan(d))
    refused = sum(int(n) for kind, n in bars if kind == "refused") + np.isnan(d).sum()
    # a bar straddling ε counts as refused: the page's bars bound the refusal rate from above
    assert refused / d.size >= results_refusal(run, "L1.attn") - 1e-9


def test_site_page_is_paged_and_links_one_reference(client, view_run):
    _, run = view_run
    second = client.get(f"/run/{run.key}/site/L1H0", params={"per": 1, "page": 2}).text
    assert 'id="example-1"' in second and 'id="example-0"' not in second
    assert "page 2 of 3" in second and "next →" in second and "← previous" in second
    one = client.get(f"/run/{run.key}/site/L1H0", params={"example": 2}).text
    assert 'id="example-2"' in one and 'id="example-0"' not in one
    for s in run.samples("L1H0", 2).iter_rows(named=True):
        marks = "accepted" if s["accepted"] else "refused"
        assert marks in one


def test_site_picker_redirects_to_the_site(client, view_run):
    _, run = view_run
    r = client.get(f"/run/{run.key}/site", params={"site": "L1H0"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/run/{run.key}/site/L1H0"


def test_samples_carry_a_mark_per_feature_shared_with_the_reference(client, view_run):
    _, run = view_run
    page = client.get(f"/run/{run.key}/site/L0H1", params={"example": 0}).text
    df = run.samples("L0H1", 0)
    want_same = sum(
        int(s[f] is not None and s[f] == s[f"{f}_ref"])
        for s in df.iter_rows(named=True)
        for f in run.features
    )
    assert page.count('class="same"') == want_same


def test_feature_page_plots_layers_with_chance(client, view_run):
    _, run = view_run
    page = client.get(f"/run/{run.key}/feature/subject").text
    assert 'class="layers"' in page and 'class="chance"' in page
    assert "heads (mean)" in page and "layer outputs" in page
    for site in run.sites:
        assert site in page


def test_compare_methods_shows_each_method_side_by_side(methods_workdir):
    import inversescope

    client = TestClient(create_app(methods_workdir))
    runs = inversescope.runs(methods_workdir)
    own = runs.filter(pl.col("method") == "inversescope")["key"][0]
    page = client.get(f"/run/{own}/methods", params={"site": "L1H0", "example": 1}).text
    for method in ("inversescope", "inversionview", "prior"):
        assert f'data-method="{method}"' in page
    assert page.count("refusal rate at L1H0") == 3


def test_compare_methods_names_what_is_missing(client, view_run):
    _, run = view_run
    page = client.get(f"/run/{run.key}/methods").text
    assert 'data-method="inversescope"' in page
    assert "No samples of inversionview, prior here" in page and "benchmarks/efficiency.py" in page


def test_compare_two_runs(methods_workdir):
    import inversescope

    keys = inversescope.runs(methods_workdir)["key"].to_list()
    client = TestClient(create_app(methods_workdir))
    r = client.get("/compare", params={"run": keys[:2], "feature": "object"})
    assert r.status_code == 200
    assert r.text.count('class="heatmap"') == 2 and "object site by site" in r.text
    assert client.get("/compare", params={"run": keys[:1]}).status_code == 422


def test_search_by_substring_and_by_label(client, view_run):
    _, run = view_run
    samples = run.samples()
    word = next(w for t in samples["text"] if t for w in t.split() if w.isalpha() and len(w) > 3)
    page = client.get(f"/run/{run.key}/search", params={"q": word.lower()}).text
    want = samples.filter(
        pl.col("text").str.to_lowercase().str.contains(word.lower(), literal=True)
    )
    assert page.count('<td class="idx">') == min(want.height, 50)
    differs = client.get(
        f"/run/{run.key}/search",
        params={"site": "L1H0", "feature": "place", "relation": "undefined"},
    ).text
    want = samples.filter((pl.col("site") == "L1H0") & pl.col("place").is_null())
    assert differs.count('<td class="idx">') == want.height
    assert '<td class="idx">' not in client.get(f"/run/{run.key}/search").text  # a form only


@pytest.mark.parametrize("relation", ["same", "differs", "is"])
def test_search_relations_match_a_polars_filter(client, view_run, relation):
    _, run = view_run
    samples = run.samples("L0H1")
    value = next((v for v in samples["object_ref"] if v), "Mary")
    params = {"site": "L0H1", "feature": "object", "relation": relation, "value": value}
    page = client.get(f"/run/{run.key}/search", params=params).text
    col, ref = pl.col("object"), pl.col("object_ref")
    expr = {"same": col == ref, "differs": col != ref, "is": col == value}[relation]
    assert page.count('<td class="idx">') == samples.filter(expr).height


def test_search_goes_on_from_where_a_full_page_stopped(client, view_run, monkeypatch):
    from inversescope.view import search

    _, run = view_run
    monkeypatch.setattr(search, "PER_PAGE", 5)
    monkeypatch.setattr(search, "SITES_PER_BLOCK", 1)
    seen, params = [], {"accepted": "any"}
    while True:
        page = client.get(f"/run/{run.key}/search", params=params).text
        seen += re.findall(
            r'site/([^"?]+)\?example=(\d+)">[^<]*</a></td><td>\d+</td>\s*'
            r'<td class="idx">(\d+)</td>',
            page,
        )
        nxt = re.search(r'<a href="([^"]+)">next →</a>', page)
        if not nxt:
            break
        params = dict(re.findall(r"(\w+)=([^&]*)", html.unescape(nxt.group(1)).split("?", 1)[1]))
    all_keys = run.samples().select("site", "example_id", "sample_idx").rows()
    assert len(seen) == len(all_keys)
    assert sorted((s, int(e), int(i)) for s, e, i in seen) == sorted(all_keys)


def test_invert_a_prompt_samples_with_the_runs_generator(client, view_run):
    _, run = view_run
    prompt = "When Mary and John went to the store, John gave a drink to"
    r = client.get(f"/run/{run.key}/invert", params={"prompt": prompt, "site": "L1H0", "n": 6})
    assert r.status_code == 200, r.text
    assert r.text.count('<td class="idx">') == 6
    assert '<mark class="read"' in r.text and "sampled in" in r.text
    for f, v in {"subject": "John", "object": "Mary", "item": "drink", "place": "store"}.items():
        assert f"<b>{f}</b> {v}" in r.text
    again = client.get(f"/run/{run.key}/invert", params={"prompt": prompt, "site": "L1H0", "n": 6})
    same = re.findall(r'<td class="text">(.*?)</td>', again.text, re.S)
    assert same == re.findall(r'<td class="text">(.*?)</td>', r.text, re.S)  # seeded
    form = client.get(f"/run/{run.key}/invert")
    assert form.status_code == 200 and "<textarea" in form.text and "sampled in" not in form.text


def test_invert_bounds_prompt_and_samples(client, view_run):
    from inversescope.view.invert import MAX_PROMPT_CHARS, MAX_SAMPLES

    _, run = view_run
    long = client.get(f"/run/{run.key}/invert", params={"prompt": "x" * (MAX_PROMPT_CHARS + 1)})
    assert long.status_code == 422 and f"at most {MAX_PROMPT_CHARS} are accepted" in long.text
    many = client.get(f"/run/{run.key}/invert", params={"prompt": "Mary", "n": MAX_SAMPLES + 1})
    assert many.status_code == 422 and f"draw 1 to {MAX_SAMPLES} samples" in many.text


def test_pages_link_only_to_what_the_app_serves(client, view_run):
    _, run = view_run
    pages = [
        "/",
        f"/run/{run.key}",
        f"/run/{run.key}/site/L0H1",
        f"/run/{run.key}/feature/item",
        f"/run/{run.key}/methods",
        f"/run/{run.key}/search?site=L0H1",
        f"/run/{run.key}/invert",
    ]
    links = set()
    for p in pages:
        links |= {html.unescape(h) for h in re.findall(r'href="(/[^"#]*)', client.get(p).text)}
    for link in sorted(links):
        assert client.get(link).status_code == 200, link
