"""The recommendation model's pure logic: scoring and the offline evaluation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from services.profile.recommendations import evaluate, ranker, scoring

DAY = scoring.DAY_US


def interactions(
    rows: list[tuple[int, int, int]], profiles: int, items: int
) -> scoring.Interactions:
    """(profile, item, time) rows of weight 1."""
    p, i, t = (np.array(column, dtype=np.int64) for column in zip(*rows, strict=True))
    return scoring.Interactions(p, i, np.ones(len(rows)), t, profiles, items)


# Item 0 and 1 go together in sessions; item 2 is bought alone by many; profile 4 has
# only item 0; profile 5 has nothing.
SHOP = interactions(
    [
        *[(0, 0, 0), (0, 1, 60), (1, 0, 0), (1, 1, 60), (2, 1, 0), (2, 0, 60)],
        *[(3, 2, 0), (3, 2, 10), (3, 2, 20), (3, 2, 30), (4, 0, 0)],
    ],
    profiles=6,
    items=4,
)


def test_related_items_come_first_and_consumed_ones_never() -> None:
    top = scoring.top_n(SHOP, 10 * DAY, 3)
    assert top.items[4].tolist()[0] == 1  # 0 and 1 co-occur
    for profile in range(6):
        had = set(SHOP.items[SHOP.profiles == profile].tolist())
        assert not had & set(top.items[profile].tolist())


def test_cold_profiles_get_popular_items_best_first() -> None:
    top = scoring.top_n(SHOP, 10 * DAY, 3)
    assert top.items[5].tolist() == [2, 0, 1]  # item 2: four interactions
    assert np.all(np.diff(top.scores[5]) <= 0)


def test_the_popular_list_is_what_a_cold_profile_gets_ties_included() -> None:
    # Many items with few distinct popularities: ties at every cut-off.
    rng = np.random.default_rng(3)
    who, what = rng.integers(0, 50, 400), rng.integers(0, 60, 400) // 3
    rows = [(int(p), int(i), 0) for p, i in zip(who, what, strict=True)]
    shop = interactions(rows, profiles=51, items=60)  # profile 50 is cold
    blocked = np.zeros(60, dtype=bool)
    blocked[[1, 7]] = True
    for size in (1, 5, 13, 60, 80):
        for excluded in (None, blocked):
            top = scoring.top_n(shop, 10 * DAY, size, excluded_items=excluded)
            popular = scoring.popular_top_n(shop, 10 * DAY, size, excluded_items=excluded)
            assert popular.items[0].tolist() == top.items[50].tolist(), size
            assert popular.scores[0].tolist() == top.scores[50].tolist(), size
    assert scoring.popular_top_n(SHOP, 10 * DAY, 3).items[0].tolist() == [2, 0, 1]


def test_consumed_items_come_back_only_when_allowed_and_exclusions_always() -> None:
    blocked = np.array([False, False, True, False])
    allowed = scoring.top_n(SHOP, 10 * DAY, 3, allow_consumed=True, excluded_items=blocked)
    assert 0 in allowed.items[4].tolist()
    assert 2 not in allowed.items.ravel().tolist()


def test_pairs_outside_the_session_window_do_not_co_occur() -> None:
    apart = interactions([(0, 0, 0), (0, 1, 3 * DAY)], profiles=1, items=2)
    assert scoring.cooccurrence(apart, 4 * DAY, scoring.Settings()).nnz == 0
    together = interactions([(0, 0, 0), (0, 1, 60)], profiles=1, items=2)
    assert scoring.cooccurrence(together, 4 * DAY, scoring.Settings()).nnz == 2


def test_old_pairs_count_less_than_recent_ones() -> None:
    old_and_new = interactions(
        [(0, 0, 0), (0, 1, 60), (1, 0, 300 * DAY), (1, 2, 300 * DAY + 60)], profiles=3, items=3
    )
    related = scoring.cooccurrence(old_and_new, 301 * DAY, scoring.Settings(popularity_weight=0))
    raw = scoring.cooccurrence(
        old_and_new, 301 * DAY, scoring.Settings(popularity_weight=0, time_decay=False)
    )
    assert related[0, 2] > related[0, 1]
    assert raw[0, 2] == raw[0, 1]


def test_scoring_is_a_pure_function_of_its_input() -> None:
    log = evaluate.synthetic(300, 120, seed=11)
    first = scoring.top_n(
        log, int(log.timestamps_us.max()), 10, scoring.Settings(block_profiles=64)
    )
    again = scoring.top_n(log, int(log.timestamps_us.max()), 10)
    assert np.array_equal(first.items, again.items)
    assert np.array_equal(first.scores, again.scores)
    assert np.array_equal(
        evaluate.synthetic(300, 120, seed=11).items, evaluate.synthetic(300, 120, seed=11).items
    )


def test_leave_last_out_holds_out_each_profiles_last_interaction_only() -> None:
    log = scoring.Interactions(
        np.array([0, 0, 0, 1, 2, 2]),
        np.array([5, 6, 7, 8, 9, 9]),
        np.ones(6),
        np.array([3, 1, 2, 0, 0, 0]),
        profile_count=3,
        item_count=10,
    )
    held, target = evaluate.leave_last_out(log)
    # Profile 0's last in time is item 5; profile 1 has one row (kept); profile 2's
    # tie goes to the later row.
    assert held.tolist() == [True, False, False, False, False, True]
    assert target.tolist() == [5, -1, 9]


def test_co_occurrence_beats_popularity_on_clustered_shoppers() -> None:
    results = {r.name: r for r in evaluate.evaluate(evaluate.synthetic(600, 300, seed=5))}
    popularity = results["popularity"]
    for name, result in results.items():
        assert 0 <= result.ndcg <= result.hit_rate <= 1
        assert result.evaluated == 600
        if name != "popularity":
            assert result.hit_rate > popularity.hit_rate + 0.05, name


def test_a_profiles_latest_interactions_lead_its_recommendations() -> None:
    # Item 2 goes with item 0, item 3 with item 1; profile 0 had item 0, later item 1.
    data = interactions(
        [(1, 0, 0), (1, 2, 60), (2, 1, 0), (2, 3, 60), (0, 0, 0), (0, 1, 10 * DAY)],
        profiles=3,
        items=4,
    )
    alike = scoring.Settings(time_decay=False, profile_half_life_interactions=None)
    latest_first = scoring.Settings(time_decay=False)
    # Without the weighting the two are tied and the lower index wins.
    assert scoring.top_n(data, 11 * DAY, 2, alike).items[0].tolist() == [2, 3]
    assert scoring.top_n(data, 11 * DAY, 2, latest_first).items[0].tolist() == [3, 2]


def test_ranker_targets_are_earlier_next_interactions() -> None:
    log = scoring.Interactions(
        np.array([0, 0, 0, 1, 1]),
        np.array([5, 6, 7, 8, 9]),
        np.ones(5),
        np.array([1, 2, 3, 1, 2]),
        profile_count=2,
        item_count=10,
    )
    history, target = ranker.without_last(log, 2)
    # Profile 0 loses its last two and its target is the first of them; profile 1 has
    # only two interactions, so it keeps them and has no target.
    assert history.items.tolist() == [5, 8, 9]
    assert target.tolist() == [6, -1]


def test_with_a_goal_event_the_targets_are_the_next_goal_items() -> None:
    # Profile 0 views 1, orders 10, views 2, orders 11 and 12 at one instant, views 3;
    # profile 1 views and orders once, at first; profile 2 only views.
    rows = [(0, 1, 1), (0, 10, 2), (0, 2, 3), (0, 11, 4), (0, 12, 4), (0, 3, 5),
            (1, 10, 1), (1, 4, 2), (2, 5, 1), (2, 6, 2)]  # fmt: skip
    log = interactions(rows, profiles=3, items=13)
    goal = np.array([item >= 10 for _, item, _ in rows])
    # Without the goal the next interactions are views: the last one, then the one before.
    assert ranker.without_last(log, 1)[1].tolist() == [3, 4, 6]
    history, target, ties = ranker.goal_targets(log, 1, goal)
    # With it, the last order (11 and 12 together) after what came before it; profile
    # 1's only order has nothing before it and profile 2 has none: no target, all kept.
    assert target.tolist() == [11, -1, -1]
    assert history.items.tolist() == [1, 10, 2, 10, 4, 5, 6]
    assert ties.toarray()[0].nonzero()[0].tolist() == [11, 12]
    history, target, _ = ranker.goal_targets(log, 2, goal)
    assert target.tolist() == [10, -1, -1]
    assert history.items.tolist() == [1, 10, 4, 5, 6]
    assert ranker.goal_targets(log, 3, goal)[1].tolist() == [-1, -1, -1]


def test_a_goal_event_makes_the_ranker_recommend_the_goal_items() -> None:
    # 30 pages viewed along a chain, 4 products ordered (weight 5) among the views; each
    # person's last interactions are views, so the next interaction is the next page,
    # while the next order is a product. A person who viewed pages 2 and 3 is next
    # expected to view page 4 but to order a product.
    rng = np.random.default_rng(1)
    pages, products = 30, 4
    rows, goal, weights = [], [], []
    for person in range(100):
        start = int(rng.integers(0, pages))
        ordered = (rng.permutation(products)[:2] + pages).tolist()
        path = [start, start + 1, ordered[0], start + 2, ordered[1], start + 3, start + 4]
        for step, item in enumerate(path):
            is_order = step in (2, 4)
            item = item if is_order else item % pages
            rows.append((person, item, step * 60_000_000))
            goal.append(is_order)
            weights.append(5.0 if is_order else 1.0)
    rows += [(100, 2, 0), (100, 3, 60_000_000)]
    goal += [False, False]
    weights += [1.0, 1.0]
    p, i, t = (np.array(column, dtype=np.int64) for column in zip(*rows, strict=True))
    log = scoring.Interactions(p, i, np.array(weights), t, 101, pages + products)
    knobs = ranker.RankerSettings(targets=2, rounds=50, min_groups=10)
    viewed, used = ranker.recommend(log, 3 * DAY, 3, knobs=knobs)
    ordered_next, used_goal = ranker.recommend(log, 3 * DAY, 3, knobs=knobs, goal=np.array(goal))
    assert used and used_goal
    assert viewed.items[100][0] == 4
    assert ordered_next.items[100][0] >= pages


def test_the_ranker_is_deterministic_for_a_seed() -> None:
    log = evaluate.synthetic(200, 80, seed=3)
    knobs = ranker.RankerSettings(targets=2, rounds=30)
    first = evaluate.evaluate_ranker(log, seed=1, knobs=knobs)
    again = evaluate.evaluate_ranker(log, seed=1, knobs=knobs)
    assert first == again
    figures = {result.name: result for result in first}
    ranked = figures["LightGBM lambdarank over the candidates"]
    assert ranked.ndcg is not None
    assert 0 < ranked.ndcg <= ranked.hit_rate <= 1


def test_ranker_candidates_never_hold_consumed_or_excluded_items() -> None:
    log = evaluate.synthetic(120, 60, seed=4)
    now = int(log.timestamps_us.max()) + 1
    blocked = np.zeros(log.item_count, dtype=bool)
    blocked[[0, 1, 2]] = True
    found = ranker.candidates(log, now, excluded_items=blocked)
    consumed = set(zip(log.profiles.tolist(), log.items.tolist(), strict=True))
    pairs = set(zip(found.profiles.tolist(), found.items.tolist(), strict=True))
    assert not pairs & consumed
    assert not set(found.items.tolist()) & {0, 1, 2}
    assert found.features.shape == (len(found.items), len(ranker.FEATURES))
    allowed = ranker.candidates(log, now, allow_consumed=True)
    assert set(zip(allowed.profiles.tolist(), allowed.items.tolist(), strict=True)) & consumed


def test_ranker_uses_item_categories_when_metadata_has_them() -> None:
    from scipy import sparse

    log = evaluate.synthetic(150, 40, seed=2)
    now = int(log.timestamps_us.max()) + 1
    categories = sparse.csr_matrix(np.eye(40)[:, :4] + np.eye(40)[:, 4:8])
    metadata = ranker.ItemMetadata(categories=categories, release_us=np.zeros(40, dtype=np.int64))
    found = ranker.candidates(log, now, metadata=metadata)
    affinity = found.features[:, ranker.FEATURES.index("category_affinity")]
    assert np.isfinite(affinity).all() and (affinity >= 0).all() and (affinity <= 1).all()
    without = ranker.candidates(log, now)
    assert np.isnan(without.features[:, ranker.FEATURES.index("category_affinity")]).all()


def test_training_serves_the_ranker_when_enough_profiles_teach_it() -> None:
    log = evaluate.synthetic(300, 80, seed=6)
    cold = log.profile_count  # one more profile, without interactions
    log = scoring.Interactions(
        log.profiles, log.items, log.weights, log.timestamps_us, cold + 1, log.item_count
    )
    now = int(log.timestamps_us.max()) + 1
    knobs = ranker.RankerSettings(targets=3, rounds=30, min_groups=20)
    top, used = ranker.recommend(log, now, 5, knobs=knobs, seed=2)
    assert used
    again, _ = ranker.recommend(log, now, 5, knobs=knobs, seed=2)
    assert np.array_equal(top.items, again.items) and np.array_equal(top.scores, again.scores)
    consumed = set(zip(log.profiles.tolist(), log.items.tolist(), strict=True))
    served = {(p, int(i)) for p, row in enumerate(top.items) for i in row if i >= 0}
    assert not served & consumed
    # Every profile with history gets its full list, scored in (0, 1) best first.
    ranked = top.items[:cold]
    assert (ranked >= 0).all()
    assert ((top.scores[:cold] > 0) & (top.scores[:cold] < 1)).all()
    assert (np.diff(top.scores[:cold], axis=1) <= 0).all()
    # The cold profile gets the blend's popular items; too few learners: the blend.
    blend = scoring.top_n(log, now, 5)
    assert top.items[cold].tolist() == blend.items[cold].tolist()
    fallback, used = ranker.recommend(log, now, 5, knobs=replace(knobs, min_groups=10**6))
    assert not used and np.array_equal(fallback.items, blend.items)
    assert fallback.scores.tobytes() == blend.scores.tobytes()


def test_categories_come_from_shared_text_properties() -> None:
    metadata = [
        {"product_id": "a", "genre": ["Comedy", "Drama"], "title": "A", "price": 3},
        {"product_id": "b", "genre": ["Comedy"], "title": "B"},
        {"product_id": "c", "genre": "Drama", "title": "C"},
    ]
    categories = ranker.categories_from_properties(metadata, "product_id")
    assert categories is not None
    # genre=Comedy and genre=Drama are shared; titles are unique, ids and numbers ignored.
    assert categories.toarray().tolist() == [[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]


def test_profiles_beyond_the_ranking_budget_keep_the_blend() -> None:
    log = evaluate.synthetic(300, 80, seed=6)
    now = int(log.timestamps_us.max()) + 1
    # Room to rank ten profiles (10 x 80 cells) and to learn from a sample.
    knobs = ranker.RankerSettings(
        targets=3, rounds=30, min_groups=20, rank_cells=800, fit_cells=3 * 80 * 150
    )
    top, used = ranker.recommend(log, now, 5, knobs=knobs, seed=2)
    assert used
    blend = scoring.top_n(log, now, 5)
    last = np.full(log.profile_count, -1)
    np.maximum.at(last, log.profiles, log.timestamps_us)
    latest = set(np.lexsort((np.arange(log.profile_count), -last))[:10].tolist())
    differs = {
        p for p in range(log.profile_count) if top.items[p].tolist() != blend.items[p].tolist()
    }
    assert differs and differs <= latest
    # The profiles it does not rank get exactly the blend's lists (scored only for
    # them, not for every profile): bit for bit.
    kept = np.array(sorted(set(range(log.profile_count)) - latest))
    assert top.items[kept].tobytes() == blend.items[kept].tobytes()
    assert top.scores[kept].tobytes() == blend.scores[kept].tobytes()


def test_the_blend_of_some_profiles_is_their_rows_of_everyones() -> None:
    log = evaluate.synthetic(300, 80, seed=6)
    weights = np.random.default_rng(3).choice([0.7, 1.0, 2.5, 3.0], len(log.items))
    log = replace(log, weights=weights)
    now = int(log.timestamps_us.max()) + 1
    blocked = np.zeros(80, dtype=bool)
    blocked[[1, 5, 17]] = True
    settings = scoring.Settings(block_profiles=64)
    everyone = scoring.top_n(log, now, 7, settings, excluded_items=blocked)
    some = np.array([3, 4, 70, 71, 150, 299])
    matrix = scoring.cooccurrence(log, now, settings)
    for item_item in (None, matrix):
        chosen = scoring.top_n(
            log, now, 7, settings, excluded_items=blocked, profiles=some, item_item=item_item
        )
        assert chosen.items[some].tobytes() == everyone.items[some].tobytes()
        assert chosen.scores[some].tobytes() == everyone.scores[some].tobytes()
        others = np.setdiff1d(np.arange(log.profile_count), some)
        assert (chosen.items[others] == -1).all() and (chosen.scores[others] == 0).all()


def test_items_recorded_with_the_next_one_are_next_too() -> None:
    log = scoring.Interactions(
        np.array([0, 0, 0, 0, 1, 1]),
        np.array([1, 2, 3, 4, 5, 6]),
        np.ones(6),
        np.array([1, 2, 2, 3, 1, 2]),
        profile_count=2,
        item_count=7,
    )

    # Profile 0 without its last three: the next is item 2, recorded with item 3 (not
    # with item 4, later); profile 1 has too few interactions to lose three.
    def pairs(k: int) -> list[tuple[int, int]]:
        rows, cols = ranker.tied_next(log, k).nonzero()
        return sorted(zip(rows.tolist(), cols.tolist(), strict=True))

    assert pairs(3) == [(0, 2), (0, 3)]
    assert pairs(1) == [(0, 4), (1, 6)]


def test_a_short_ranked_list_is_filled_from_the_blend_below_the_ranked_items() -> None:
    items = np.array([[4, 2, -1, -1], [1, 2, 3, 5]])
    scores = np.array([[0.9, 0.6, 0.0, 0.0], [0.9, 0.8, 0.7, 0.6]])
    blend = scoring.TopN(np.array([[2, 7, 8, 9], [5, 6, 7, 8]]), np.ones((2, 4)))
    ranker._fill_from(items, scores, blend, np.array([0, 1]))
    assert items.tolist() == [[4, 2, 7, 8], [1, 2, 3, 5]]
    assert scores[0].tolist() == [0.9, 0.6, 0.3, 0.15]


def _best_by_sorting(scores: np.ndarray, width: int, positive: bool) -> list[list[int]]:
    """Each row's best `width` usable columns by a full sort: best first, ties to the
    lower column."""
    out = []
    for row in scores:
        usable = [
            c for c in range(len(row)) if np.isfinite(row[c]) and (row[c] > 0 or not positive)
        ]
        out.append(sorted(usable, key=lambda c: (-row[c], c))[:width])
    return out


def test_best_in_rows_is_a_full_sort_cut_at_the_width_ties_to_the_lower_column() -> None:
    rng = np.random.default_rng(5)
    for n, width in ((1, 3), (7, 3), (50, 10), (400, 5), (1000, 30)):
        # Few distinct values (ties at every cut-off), zeros, blocked (-inf) items and
        # rows with fewer usable items than the width.
        scores = rng.integers(0, 4, (12, n)).astype(np.float64)
        scores[rng.random((12, n)) < 0.3] = -np.inf
        scores[0] = -np.inf
        scores[1, 1:] = 0.0
        for positive in (False, True):
            rows, cols = scoring.best_in_rows(scores, width, positive=positive)
            got = [cols[rows == r].tolist() for r in range(len(scores))]
            assert got == _best_by_sorting(scores, width, positive), (n, width, positive)


def test_ranker_candidates_take_a_shared_rankings_ties_at_the_lower_item() -> None:
    # Every item but 0 equally popular (2 profiles each); profile 0 consumed item 5:
    # its popular candidates are item 0 and then the lowest indices it did not consume.
    rows = [(0, 0, 0), (0, 5, DAY)] + [(p, 0, 0) for p in range(1, 4)]
    rows += [(p, i, DAY) for i in range(1, 40) for p in (10 + i, 60 + i)]
    log = interactions(rows, profiles=100, items=40)
    knobs = replace(ranker.RankerSettings(), popular_width=4, recent_width=0, latest_width=0)
    knobs = replace(knobs, blend_width=0, windowed_width=0, cosine_width=0, next_width=0)
    found = ranker.candidates(log, 10 * DAY, ranker=knobs, profiles=np.array([0]))
    assert found.items.tolist() == [1, 2, 3, 4]  # 0 and 5 consumed, then the lowest


def test_blocks_on_two_threads_give_the_same_lists_and_candidates_as_on_one() -> None:
    log = evaluate.synthetic(300, 80, seed=6)
    now = int(log.timestamps_us.max()) + 1
    settings = scoring.Settings(block_profiles=16)
    one = scoring.top_n(log, now, 10, settings, threads=1)
    two = scoring.top_n(log, now, 10, settings, threads=2)
    assert np.array_equal(one.items, two.items) and np.array_equal(one.scores, two.scores)
    knobs = replace(ranker.RankerSettings(), block_profiles=16)
    first = ranker.candidates(log, now, ranker=knobs, threads=1)
    second = ranker.candidates(log, now, ranker=knobs, threads=2)
    assert np.array_equal(first.profiles, second.profiles)
    assert np.array_equal(first.items, second.items)
    assert np.array_equal(first.features, second.features, equal_nan=True)
