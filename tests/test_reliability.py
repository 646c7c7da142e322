"""The catalogue: every failure mode napari-deeppt guards against, and the guarantee for each.

Read this module top to bottom. Each entry names a way a result could go silently wrong (or
a user could meet a raw traceback), the guarantee that replaces it, and the tests that hold
the guarantee (``tests/test_reliability_<area>.py``; each test's docstring states its one
guarantee). The tests below check that the catalogue and the tests agree: a reliability test
missing here, or an entry naming a test that does not exist, fails the suite.
"""

from __future__ import annotations

import ast
from pathlib import Path

HERE = Path(__file__).parent

#: failure mode → (guarantee, tests as "<area>::<test name>")
CATALOGUE: dict[str, tuple[str, list[str]]] = {
    # -- slides and the feature cache ------------------------------------------------------
    "Two slides that differ only in the middle share a feature-cache entry": (
        "The cache key is a digest of the stored bytes every tile of the grid reads (TIFF "
        "tiles/strips, uncompressed rows, Zarr chunks) plus what changes decoding.",
        [
            "slides::test_slides_differing_only_in_the_middle_never_share_a_cache_entry",
            "slides::test_jpeg_slides_differing_in_one_middle_tile_never_share_a_cache_entry",
            "slides::test_ome_zarr_differing_in_one_chunk_never_share_a_cache_entry",
            "slides::test_identical_content_at_another_path_hits_the_cache",
            "slides::test_a_change_the_grid_does_not_read_may_hit",
            "slides::test_an_uncompressed_slide_digest_reads_only_the_rows_the_grid_reads",
        ],
    ),
    "A truncated tile decodes as grey rows; a cut file says 'no 2-D image'": (
        "SlideReadError naming the file, level and tile; a file cut before a directory says "
        "it is truncated, in one line, with nothing from tifffile.",
        [
            "slides::test_a_tile_with_a_short_byte_count_is_an_error",
            "slides::test_a_file_cut_inside_its_last_tile_is_an_error",
            "slides::test_the_jpeg_batch_reader_refuses_a_short_tile",
            "slides::test_a_file_cut_before_its_directory_says_truncated",
            "slides::test_a_pyramid_cut_before_a_later_directory_says_truncated",
            "slides::test_an_ome_zarr_missing_a_level_says_so",
        ],
    ),
    "A slide's metadata in an unexpected form gives a traceback or an absurd pixel size": (
        "An Aperio description on a file tifffile reads as its own layout still opens, with "
        "the description's pixel size; a pixel size in a file that is not a positive finite "
        "number counts as none, one given as mpp=/magnification= is refused.",
        [
            "slides::test_an_aperio_description_on_another_layout_opens_with_its_pixel_size",
            "slides::test_a_pixel_size_that_is_not_a_positive_number_is_none_or_refused",
        ],
    ),
    # -- weights, bundles, cached samples ---------------------------------------------------
    "Weights of another model or a broken weights file give torch's traceback": (
        "One line naming the file, the extractor and the first tensor that does not fit; "
        "never torch's weights_only advice; checked once before any slide.",
        [
            "models::test_weights_of_another_architecture_name_a_tensor_that_does_not_fit",
            "models::test_weights_with_missing_and_unexpected_tensors_are_named",
            "models::test_truncated_weights_file_says_truncated",
            "models::test_random_bytes_as_weights_never_show_torchs_advice",
            "models::test_a_pickled_model_instead_of_a_state_dict_says_what_to_save",
            "models::test_empty_weights_file",
            "models::test_safetensors_of_the_wrong_model_are_refused",
            "models::test_check_weights_returns_the_hash_the_features_record",
            "models::test_predict_refuses_other_weights_before_extracting",
            "cli::test_run_checks_the_bundle_and_weights_before_any_slide",
        ],
    ),
    "A file that is not a model bundle gives torch's unpickling text": (
        "'<file>: not a napari-deeppt model bundle (why)', or 'written by a newer "
        "napari-deeppt'; bundles are written atomically and carry their SHA-256.",
        [
            "models::test_random_bytes_are_not_a_bundle",
            "models::test_truncated_bundle_says_truncated",
            "models::test_empty_bundle_file",
            "models::test_a_zip_that_is_not_a_bundle",
            "models::test_torch_files_of_other_objects_are_not_bundles",
            "models::test_a_directory_is_not_a_bundle",
            "models::test_a_bundle_from_a_newer_format_says_upgrade",
            "models::test_a_bundle_whose_tensors_do_not_fit_is_refused_in_one_line",
            "models::test_bundle_sha256_is_the_hash_of_the_file",
            "models::test_bundle_save_never_overwrites_and_leaves_nothing_when_it_fails",
        ],
    ),
    "Features made another way pass for the bundle's": (
        "Another extractor, weights hash, tile size or any stain setting is refused, naming "
        "what was given and what the bundle needs.",
        [
            "models::test_features_that_fit_predict",
            "models::test_another_stain_target_with_the_same_method_is_refused",
            "models::test_tiles_of_another_size_are_refused_even_without_grid_provenance",
            "models::test_extractor_and_weights_mismatches_name_both",
        ],
    ),
    "A corrupt or outdated cached sample slide or demo model is reused": (
        "Each is keyed on what makes it (code version included) and its SHA-256 is checked "
        "before reuse; otherwise it is made again with a warning.",
        [
            "models::test_a_corrupt_cached_sample_slide_is_made_again",
            "models::test_a_sample_slide_without_its_record_is_not_trusted",
            "models::test_a_corrupt_cached_demo_bundle_is_trained_again",
            "models::test_the_demo_bundle_is_keyed_on_the_code_version",
        ],
    ),
    # -- training inputs and metrics -------------------------------------------------------
    "Spots off the slide are trained on": (
        "Spots centred outside their slide are refused before any feature work (ids, slide, "
        "size); a spot over the edge keeps its tile centred, the outside read as white.",
        [
            "training::test_spots_whose_centre_is_off_the_slide_are_refused_before_any_feature_work",
            "training::test_spot_coordinates_that_are_not_numbers_are_refused",
            "training::test_a_spot_over_the_edge_reads_its_outside_as_white_padding",
            "training::test_one_slide_spelled_two_ways_is_one_section",
        ],
    ),
    "Pooled spot R is dominated by per-section offsets": (
        "Spot R is computed within each held-out section and averaged (per-section table); "
        "bulk keeps DeepPT's pooled R; the summary says which.",
        [
            "training::test_spot_r_is_the_mean_of_within_section_r_not_the_pooled_r",
            "training::test_within_section_p_value_is_fishers_combined_z",
            "training::test_sections_too_small_or_constant_are_left_out_not_counted_as_zero",
            "training::test_a_spot_training_run_reports_within_section_r_per_gene_and_per_section",
            "training::test_spot_early_stopping_scores_validation_within_sections",
        ],
    ),
    "Cross-validation settings the data cannot fill fail after all features are computed": (
        "Checked before any feature work: the default folds shrink to fit few patients or "
        "sections (and say so); folds asked for that cannot be filled are refused, naming "
        "the patients or sections and settings that work.",
        [
            "training::test_fold_settings_five_sections_cannot_fill_five_by_five",
            "training::test_fold_settings_fewer_patients_than_outer_folds",
            "training::test_fold_check_agrees_with_the_folds_training_makes",
            "training::test_bulk_cohort_too_small_for_the_folds_is_refused_before_any_feature_work",
            "training::test_spot_sections_too_few_for_the_folds_are_refused_before_any_feature_work",
            "training::test_a_missing_or_unreadable_slide_is_found_before_any_feature_work",
        ],
    ),
    "One slide listed for two samples sits in a training and a test fold at once": (
        "Refused before any feature work, naming the slide and both samples.",
        ["training::test_one_slide_listed_for_two_samples_is_refused_before_any_feature_work"],
    ),
    "An expression table that does not match is misreported or trained on": (
        "The message shows the table's own sample names (both axes when none match); labels "
        "are read as written; repeated samples or genes, unnamed genes, missing, text and "
        "infinite values are refused (response tables too); so are impossible settings and "
        "a run that diverges.",
        [
            "training::test_expression_files_keep_their_labels_as_written",
            "training::test_tile_settings_are_refused_before_the_tables_are_read",
            "training::test_response_tables_are_checked_as_training_tables_are",
            "training::test_unmatched_samples_are_shown_with_the_tables_sample_names",
            "training::test_no_sample_in_common_shows_both_axes_and_the_manifest_ids",
            "training::test_a_sample_twice_in_the_expression_table_is_refused",
            "training::test_infinite_expression_values_are_refused",
            "training::test_training_settings_name_the_bad_value",
            "training::test_training_that_diverges_is_refused_not_saved_as_nan",
        ],
    ),
    # -- outputs, multi-slide commands and cohort runs -------------------------------------
    "Two inputs write one output": (
        "Slides whose outputs would share a name are refused before any work; cohort sample "
        "ids must be plain file names, distinct without case, from a file or a table.",
        [
            "cli::test_two_slides_with_one_file_name_are_refused_before_any_work",
            "cli::test_manifest_sample_ids_cannot_leave_the_output_folder",
            "cli::test_sample_ids_that_differ_only_in_case_are_refused",
            "cli::test_a_manifest_table_is_checked_as_a_manifest_file_is",
        ],
    ),
    "An output folder that cannot be written gives a traceback or half a result": (
        "One line naming the file and what to do; a slide's outputs are all new or all old; "
        "partials of dead processes are cleaned, a live run's kept.",
        [
            "cli::test_an_output_folder_that_cannot_be_made_is_one_line",
            "cli::test_a_full_disk_leaves_the_old_outputs_whole_and_a_rerun_works",
            "cli::test_stale_partial_files_are_cleaned_but_live_ones_kept",
        ],
    ),
    "--overwrite onto a folder deletes the folder and everything in it": (
        "A file output never replaces an existing folder: refused in one line before any "
        "work (and, should a block write a file where a folder is, nothing is replaced).",
        ["cli::test_overwrite_never_replaces_a_folder_with_a_file"],
    ),
    "One bad slide stops a multi-slide command; warnings print as source lines": (
        "The bad slide is reported, the others run, a summary and exit 1 follow; warnings "
        "are 'warning:' lines.",
        [
            "cli::test_a_bad_slide_among_several_is_reported_and_the_others_run",
            "cli::test_warnings_reach_the_user_as_clean_lines",
        ],
    ),
    "A resumed cohort mixes models, slides or settings": (
        "Each result records what made it; resume reuses only matches (tile counts kept) and "
        "recomputes the others, saying why.",
        [
            "cli::test_resume_with_another_bundle_recomputes_every_slide",
            "cli::test_resume_reuses_matching_results_and_keeps_their_tile_counts",
            "cli::test_resume_with_another_slide_under_a_sample_id_recomputes_it",
            "cli::test_resume_with_other_settings_recomputes",
        ],
    ),
    # -- found by a bad-input probe of the above ---------------------------------------------
    "A slide that fails on a rerun keeps its old values in the cohort table": (
        "The cohort table holds exactly the samples reported ok or reused; a missing slide "
        "is an error row, not the end of the run; a manifest without slides is refused.",
        [
            "cli::test_a_slide_that_fails_on_rerun_drops_its_old_result_from_the_cohort",
            "cli::test_a_missing_slide_in_a_run_manifest_is_a_report_row",
            "cli::test_a_manifest_without_slides_is_refused",
        ],
    ),
    "Manifest ids are misread ('NA' → NaN, an Excel BOM hides a column, empty ids)": (
        "Ids are read as written; a BOM is ignored; an empty sample or patient id is refused "
        "naming its line; a trailing delimiter never shifts the columns.",
        [
            "cli::test_manifest_ids_are_read_as_written_and_empty_ones_refused",
            "cli::test_a_manifest_saved_with_a_byte_order_mark_reads",
            "cli::test_trailing_delimiters_never_shift_a_tables_columns",
        ],
    ),
    "Weights given to an extractor that uses none are silently ignored": (
        "Refused once, before any slide, naming the file.",
        ["cli::test_weights_given_for_an_extractor_without_weights_are_refused"],
    ),
    "Commands leave partials, empty folders, or messages that mislead": (
        "Dead processes' partials in --out are cleaned; a refused command makes no folder; "
        "an empty gene or format selection is refused, never taken as all or none; "
        "the summary says when all slides failed; an OS error without a file names the "
        "output folder; torch's own warnings never reach the user.",
        [
            "cli::test_a_stale_partial_in_an_output_folder_is_removed_by_the_next_command",
            "cli::test_a_refused_command_leaves_no_empty_output_folder",
            "cli::test_a_command_its_slide_refuses_leaves_no_output_folder",
            "cli::test_an_empty_selection_is_refused_not_taken_as_everything",
            "cli::test_the_summary_does_not_claim_others_were_written_when_all_failed",
            "cli::test_a_full_disk_error_names_where_it_was_writing",
            "cli::test_torch_never_speaks_to_the_user",
        ],
    ),
    "Compiled and int8 models pile up in the cache with every torch, weights and batch": (
        "The four most recently used entries of a model cache are kept, the one in use "
        "always; nothing else in the folder is touched.",
        ["cli::test_a_cache_folder_keeps_its_most_recently_used_entries_and_nothing_else_goes"],
    ),
}


def _reliability_tests() -> dict[str, str | None]:
    """Every test function in tests/test_reliability_<area>.py as "<area>::<name>" → docstring."""
    found: dict[str, str | None] = {}
    for module in sorted(HERE.glob("test_reliability_*.py")):
        area = module.stem.removeprefix("test_reliability_")
        for node in ast.parse(module.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                found[f"{area}::{node.name}"] = ast.get_docstring(node)
    return found


def test_every_reliability_test_is_in_the_catalogue():
    """A reliability test that the catalogue does not list fails the suite (and vice versa)."""
    listed = [name for _, tests in CATALOGUE.values() for name in tests]
    assert len(listed) == len(set(listed)), "a test is listed twice"
    existing = _reliability_tests()
    assert not set(existing) - set(listed), "add these to CATALOGUE"
    assert not set(listed) - set(existing), "these tests do not exist"


def test_every_reliability_test_states_its_guarantee():
    """Each test's docstring says, in a sentence, what it guarantees."""
    missing = [name for name, doc in _reliability_tests().items() if not doc or len(doc) < 20]
    assert not missing
